"""A model of the user's own: ``model = "MODULE:CALLABLE"``, resolved and identified.

``MODULE`` is an importable module name (installed on the machine, or on its
``PYTHONPATH``) or a path to a ``.py`` file; ``CALLABLE`` (dotted for an
attribute of an attribute) takes ``input_shape`` and ``num_classes`` as keywords
and returns an ``nn.Module`` producing logits of shape ``(batch, num_classes)``.

The model's :class:`ModelIdentity` is the reference, the SHA-256 of the file
that defines the callable (what ``sha256sum`` prints for it) and, for a module
of an installed distribution, that distribution's name and version. The
coordinator sends it with the model spec; a node that resolves the same
reference to different code refuses to train (:func:`check_same_identity`).

A ``.py`` file is imported under :func:`shipped_module_name` of its reference.
``fedge simulate`` copies the file under that name into the app it submits, so
every simulation worker imports the copy shipped with the app; where no copy
is on ``sys.path`` the file is loaded from its path.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from fedge.shared.errors import ModelError

if TYPE_CHECKING:  # torch loads only when a model is built: the config needs none
    from torch import nn

SEPARATOR = ":"
SHIPPED_PREFIX = "fedge_model_"
# Batch of the shape check: 2, so a model that squeezes the batch axis is caught.
CHECK_BATCH = 2


@dataclass(frozen=True)
class ModelIdentity:
    """Which code a user's model is: what the coordinator sends and nodes compare.

    Attributes
    ----------
    reference : str
        ``MODULE:CALLABLE`` as the run config gives it.
    sha256 : str
        SHA-256 (hex) of the file that defines the callable.
    package : str
        The installed distribution the module belongs to; empty for a module
        that is merely on the path, or a ``.py`` file.
    version : str
        That distribution's version; empty without one.
    """

    reference: str
    sha256: str
    package: str = ""
    version: str = ""

    def to_dict(self) -> dict[str, str]:
        """Return the JSON object written to ``model.json`` and the ONNX metadata."""
        return {
            "reference": self.reference,
            "sha256": self.sha256,
            "package": self.package,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelIdentity:
        """Read :meth:`to_dict` output.

        Raises
        ------
        ModelError
            A key is missing.
        """
        try:
            return cls(
                reference=str(data["reference"]),
                sha256=str(data["sha256"]),
                package=str(data.get("package") or ""),
                version=str(data.get("version") or ""),
            )
        except (KeyError, TypeError) as e:
            raise ModelError(f"model identity is incomplete: {e!r}") from e

    def describe(self) -> str:
        """One phrase: ``nets:Net (sha256 ab12..., package nets 1.0)``."""
        package = f", package {self.package} {self.version}" if self.package else ""
        return f"{self.reference} (sha256 {self.sha256}{package})"


def is_model_reference(model: str) -> bool:
    """Whether a run config's ``model`` names a user's callable, not a built-in."""
    return SEPARATOR in model


def reference_problem(model: str) -> str | None:
    """Return what is wrong with the form of ``MODULE:CALLABLE``, or None."""
    module, _, attribute = model.rpartition(SEPARATOR)
    parts = attribute.split(".")
    if not module or not all(p.isidentifier() for p in parts):
        return (
            f"'model' = {model!r} is not MODULE:CALLABLE (a module name or a .py "
            "file, a colon, then the name of the callable)"
        )
    return None


def shipped_module_name(reference: str) -> str:
    """Return the module name a ``.py`` file of ``reference`` is imported and shipped as.

    Derived from the reference, so it cannot collide with the user's other
    modules, and every process that resolves the reference uses the same one.
    """
    digest = hashlib.sha256(reference.encode("utf-8")).hexdigest()[:16]
    return f"{SHIPPED_PREFIX}{digest}"


def model_file(reference: str) -> Path | None:
    """Return the ``.py`` file ``reference`` names, or None for a module name."""
    module = reference.rpartition(SEPARATOR)[0]
    return Path(module).expanduser() if module.endswith(".py") else None


def absolute_model_reference(model: str, base: Path) -> str:
    """Return ``model`` with a relative ``.py`` path made absolute against ``base``.

    The apps run in other working directories; a module name or a built-in
    model's name is returned unchanged.
    """
    path = model_file(model) if is_model_reference(model) else None
    if path is None or path.is_absolute():
        return model
    attribute = model.rpartition(SEPARATOR)[2]
    return f"{(base / path).resolve()}{SEPARATOR}{attribute}"


def resolve_factory(
    reference: str,
) -> tuple[Callable[..., Any], ModelIdentity]:
    """Import the callable ``reference`` names; return it with its identity.

    Raises
    ------
    ModelError
        The module cannot be imported or raises on import, or has no such
        callable.
    """
    problem = reference_problem(reference)
    if problem is not None:
        raise ModelError(problem)
    module_name, _, attribute = reference.rpartition(SEPARATOR)
    path = model_file(reference)
    module = _load_file(reference, path) if path else _import(reference, module_name)
    factory: Any = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise ModelError(
                f"model {reference!r}: {_where(module)} has no attribute {part!r}; "
                "expected a callable taking input_shape and num_classes that "
                "returns an nn.Module"
            )
        factory = getattr(factory, part)
    if not callable(factory):
        raise ModelError(
            f"model {reference!r}: {attribute!r} in {_where(module)} is a "
            f"{type(factory).__name__}, not a callable; expected a function or "
            "class taking input_shape and num_classes"
        )
    source = _source_file(reference, factory, module)
    package, version = ("", "") if path else _distribution(module_name)
    identity = ModelIdentity(
        reference=reference,
        sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
        package=package,
        version=version,
    )
    return factory, identity


def check_same_identity(sent: ModelIdentity, local: ModelIdentity) -> None:
    """Refuse to go on when this machine's model code is not the coordinator's.

    Raises
    ------
    ModelError
        One line naming both identities.
    """
    if sent != local:
        raise ModelError(
            f"model code here differs from the coordinator's: the coordinator "
            f"sent {sent.describe()}, this machine has {local.describe()}; "
            "nothing is trained with it: install the coordinator's version of the "
            "model code here (`fedge node check --model` compares them)"
        )


def build_user_model(
    reference: str,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    expected: ModelIdentity | None = None,
) -> tuple[nn.Module, ModelIdentity]:
    """Build the user's model and check it gives logits of the right shape.

    Parameters
    ----------
    reference : str
        ``MODULE:CALLABLE``.
    input_shape : tuple of int
        One encoded example's shape, without the batch axis.
    num_classes : int
        Number of logits.
    expected : ModelIdentity, optional
        The identity the coordinator sent: a different local one is refused
        before the callable runs.

    Returns
    -------
    (nn.Module, ModelIdentity)

    Raises
    ------
    ModelError
        Any problem :func:`resolve_factory` finds, an identity other than
        ``expected``, a callable that raises or returns no ``nn.Module``, or a
        forward pass on a zero batch that fails or gives another shape than
        ``(batch, num_classes)``.
    """
    from torch import nn

    factory, identity = resolve_factory(reference)
    if expected is not None:
        check_same_identity(expected, identity)
    call = f"{reference.rpartition(SEPARATOR)[2]}(input_shape={tuple(input_shape)}, num_classes={num_classes})"
    try:
        model = factory(input_shape=tuple(input_shape), num_classes=num_classes)
    except Exception as e:
        raise ModelError(f"model {reference!r}: {call} raised {_one_line(e)}") from e
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model {reference!r}: {call} returned a {type(model).__name__}, "
            "expected a torch.nn.Module producing logits"
        )
    check_logits_shape(model, reference, input_shape, num_classes)
    return model, identity


def check_logits_shape(
    model: nn.Module, reference: str, input_shape: tuple[int, ...], num_classes: int
) -> None:
    """One forward pass on a zero batch; refuse an output not ``(batch, num_classes)``.

    Run in eval mode without gradients, so no layer's running statistics move.

    Raises
    ------
    ModelError
        The pass raises, or its output is not a tensor of that shape.
    """
    import torch

    batch = torch.zeros((CHECK_BATCH, *input_shape), dtype=torch.float32)
    expected = (CHECK_BATCH, num_classes)
    what = f"model {reference!r}: a forward pass on a zero batch of shape {tuple(batch.shape)}"
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(batch)
    except Exception as e:
        raise ModelError(f"{what} raised {_one_line(e)}") from e
    finally:
        model.train(training)
    if not isinstance(out, torch.Tensor):
        raise ModelError(
            f"{what} returned a {type(out).__name__}, expected a tensor of logits "
            f"of shape {expected}"
        )
    if tuple(out.shape) != expected:
        raise ModelError(
            f"{what} gave output of shape {tuple(out.shape)}, expected logits of "
            f"shape {expected} (batch, num_classes)"
        )


def _import(reference: str, module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name or module_name.startswith(f"{e.name}."):
            raise ModelError(
                f"model {reference!r}: module {module_name!r} cannot be imported "
                f"({e}); install it on this machine or put its folder on "
                "PYTHONPATH (fedge simulate also takes a path to a .py file)"
            ) from e
        raise _raised_on_import(reference, module_name, e) from e
    except Exception as e:
        raise _raised_on_import(reference, module_name, e) from e


def _load_file(reference: str, path: Path) -> ModuleType:
    """Import the shipped copy of ``path`` if one is on ``sys.path``, else the file."""
    name = shipped_module_name(reference)
    if importlib.machinery.PathFinder.find_spec(name) is not None:
        return _import(reference, name)
    if not path.is_file():
        raise ModelError(
            f"model {reference!r}: file {path} not found; give the path of the "
            ".py file that defines the model"
        )
    spec = importlib.util.spec_from_file_location(name, path)
    # A path ending in .py always gets the source loader.
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs, as an import would: dataclasses and pickling
    # inside the file look their module up by name. Loaded afresh every time,
    # so an edited file is never served from a stale import.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise _raised_on_import(reference, str(path), e) from e
    return module


def _raised_on_import(reference: str, where: str, error: Exception) -> ModelError:
    return ModelError(
        f"model {reference!r}: importing {where} raised {_one_line(error)}; "
        "fix the module (importing it in Python shows the full traceback)"
    )


def _one_line(error: BaseException) -> str:
    """``Type: message`` on one line: a user's exception may span several."""
    return " ".join(f"{type(error).__name__}: {error}".split())


def _where(module: ModuleType) -> str:
    return f"module {module.__name__!r} ({getattr(module, '__file__', '?')})"


def _source_file(reference: str, factory: Any, module: ModuleType) -> Path:
    """Return the file that defines ``factory``; the module's file when that is unknown."""
    try:
        source = inspect.getsourcefile(factory)
    except TypeError:  # a built-in, partial or instance: no source of its own
        source = None
    source = source or getattr(module, "__file__", None)
    if not source or not Path(source).is_file():
        raise ModelError(
            f"model {reference!r}: {_where(module)} has no source file to identify it by; "
            "give a module or .py file with Python source"
        )
    return Path(source)


def _distribution(module_name: str) -> tuple[str, str]:
    """Return the installed distribution and version providing ``module_name``, if any."""
    top = module_name.split(".")[0]
    names = importlib.metadata.packages_distributions().get(top) or []
    if not names:
        return "", ""
    try:
        return names[0], importlib.metadata.version(names[0])
    except importlib.metadata.PackageNotFoundError:
        return names[0], ""
