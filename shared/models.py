"""The model registry: small, DP-compatible networks rebuilt from a JSON spec.

Opacus cannot compute per-sample gradients through BatchNorm (it mixes samples),
so normalisation, where wanted, is GroupNorm. A model is fully described by a
:class:`ModelSpec`, which is what ``model.json`` stores next to ``model.pt`` and
what the server sends to clients, so any party can rebuild the same network.
A user's own model (``MODULE:CALLABLE``, :mod:`fedge.shared.model_reference`) is a
spec too: its name is the reference and it carries the code's identity, which
every party that builds it checks against its own copy.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from fedge.shared.errors import ModelError
from fedge.shared.fixed_features import FixedFeaturesLinear, default_width
from fedge.shared.model_reference import (
    ModelIdentity,
    build_user_model,
    is_model_reference,
)

# Fixed random-convolution features + a linear head (shared/fixed_features.py):
# images or series; only the head trains.
FIXED_FEATURES_MODEL = "random-conv-linear"
MODEL_NAMES = ("mlp", "cnn", "cnn1d", "gru", FIXED_FEATURES_MODEL)
# Registry models per input rank: what "auto" picks, and what each accepts.
SERIES_MODELS = ("cnn1d", "gru")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a registry model.

    Parameters
    ----------
    name : {"mlp", "cnn", "cnn1d", "gru", "random-conv-linear"} or str
        Architecture. ``mlp`` takes flat feature vectors, ``cnn`` takes
        ``(channels, height, width)`` images, ``cnn1d`` and ``gru`` take
        ``(channels, steps)`` time series. ``random-conv-linear`` takes images
        or series: a fixed random-convolution extractor and a linear head,
        the only part that trains (:mod:`fedge.shared.fixed_features`). ``MODULE:CALLABLE``: the user's own
        model, built by that callable (``identity`` then says which code).
    input_shape : tuple of int
        Shape of one example, without the batch axis.
    num_classes : int
        Number of output logits.
    hidden : tuple of int
        MLP: widths of the hidden layers. CNN: ``(conv1, conv2, fc)`` widths.
        CNN1D: ``(conv1, conv2)`` channels. GRU: ``(hidden size,)``.
        random-conv-linear: ``(filters,)`` (images) or ``(kernels,)`` (series).
    activation : {"relu", "tanh"}
        Tanh often trains better under DP-SGD (bounded activations keep
        per-sample gradient norms small; Papernot et al., 2021).
    groups : int
        GroupNorm groups after each convolution (CNN, CNN1D).
    fix_model : bool
        Apply Opacus's ``ModuleValidator.fix`` after building (run config
        ``fix-model``; :func:`fedge.shared.private_model.fix_private_model`).
    identity : ModelIdentity or None
        For a user's model: the reference, its source file's SHA-256 and
        package version. None for the registry's models.
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    hidden: tuple[int, ...] = field(default=())
    activation: str = "relu"
    groups: int = 4
    fix_model: bool = False
    identity: ModelIdentity | None = None

    def __post_init__(self) -> None:
        """Validate every field; report all problems at once."""
        problems = []
        if is_model_reference(self.name):
            if self.identity is None or self.identity.reference != self.name:
                problems.append(
                    f"the user's model {self.name!r} needs its identity "
                    f"(reference, sha256), got {self.identity}"
                )
        elif self.name not in MODEL_NAMES:
            problems.append(
                f"name must be one of {MODEL_NAMES} or MODULE:CALLABLE, "
                f"got {self.name!r}"
            )
        if self.activation not in ACTIVATIONS:
            problems.append(
                f"activation must be one of {tuple(ACTIVATIONS)}, "
                f"got {self.activation!r}"
            )
        if self.num_classes < 2:
            problems.append(f"num_classes must be >= 2, got {self.num_classes}")
        if any(d <= 0 for d in self.input_shape) or not self.input_shape:
            problems.append(f"input_shape must be positive, got {self.input_shape}")
        if self.name == "cnn" and len(self.input_shape) != 3:
            problems.append(
                "cnn needs input_shape (channels, height, width), "
                f"got {self.input_shape}"
            )
        if self.name == "cnn" and self.hidden and len(self.hidden) != 3:
            problems.append(f"cnn hidden must be (conv1, conv2, fc), got {self.hidden}")
        if self.name in SERIES_MODELS and len(self.input_shape) != 2:
            problems.append(
                f"{self.name} needs input_shape (channels, steps), "
                f"got {self.input_shape}"
            )
        if self.name == FIXED_FEATURES_MODEL and len(self.input_shape) not in (2, 3):
            problems.append(
                f"{self.name} needs images (channels, height, width) or series "
                f"(channels, steps), got input_shape {self.input_shape}; for "
                "tables use mlp"
            )
        expected = {"cnn1d": 2, "gru": 1, FIXED_FEATURES_MODEL: 1}.get(self.name)
        if expected and self.hidden and len(self.hidden) != expected:
            problems.append(
                f"{self.name} hidden must have {expected} width(s), got {self.hidden}"
            )
        if problems:
            raise ModelError("Invalid model spec: " + "; ".join(problems) + ".")

    @property
    def is_user_model(self) -> bool:
        """Whether this is the user's own model rather than a registry one."""
        return self.identity is not None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (the content of ``model.json``).

        ``fix_model`` and ``identity`` appear only when set: other models' dicts
        are unchanged.
        """
        data = asdict(self)
        if not self.fix_model:
            del data["fix_model"]
        if self.identity is None:
            del data["identity"]
        return data

    def to_json(self) -> str:
        """Serialise to a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Rebuild from :meth:`to_dict` output, ignoring unknown keys."""
        try:
            return cls(
                name=data["name"],
                input_shape=tuple(int(d) for d in data["input_shape"]),
                num_classes=int(data["num_classes"]),
                hidden=tuple(int(h) for h in data.get("hidden", ())),
                activation=data.get("activation", "relu"),
                groups=int(data.get("groups", 4)),
                fix_model=bool(data.get("fix_model", False)),
                identity=ModelIdentity.from_dict(data["identity"])
                if data.get("identity")
                else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"Model spec is incomplete or malformed: {e}") from e

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """Rebuild from a JSON string."""
        return cls.from_dict(json.loads(text))


def default_spec(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    activation: str = "relu",
    *,
    fix_model: bool = False,
) -> ModelSpec:
    """Return the registry's default spec for ``name`` on data of this shape.

    ``name="auto"`` picks ``cnn`` for images, ``cnn1d`` for time series
    ``(channels, steps)`` and ``mlp`` for feature vectors. ``fix_model`` is the
    run config's ``fix-model``. ``MODULE:CALLABLE`` gives the user's model's
    spec (:func:`user_spec`).

    Raises
    ------
    ModelError
        For a user's model, as :func:`user_spec`.
    """
    if is_model_reference(name):
        return user_spec(name, input_shape, num_classes, fix_model=fix_model)
    if name == "auto":
        name = {3: "cnn", 2: "cnn1d"}.get(len(input_shape), "mlp")
    hidden = {
        FIXED_FEATURES_MODEL: (default_width(input_shape),),
        "mlp": (128, 64),
        "cnn": (16, 32, 64),
        "cnn1d": (16, 32),
        "gru": (32,),
    }.get(name, ())
    if name == "mlp" and len(input_shape) != 1:
        input_shape = (math.prod(input_shape),)
    return ModelSpec(
        name=name,
        input_shape=tuple(input_shape),
        num_classes=num_classes,
        hidden=hidden,
        activation=activation,
        fix_model=fix_model,
    )


def user_spec(
    reference: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    fix_model: bool = False,
) -> ModelSpec:
    """Return the spec of the user's model ``reference``, checked by building it once.

    Raises
    ------
    ModelError
        The module cannot be imported or raises on import, has no such
        callable, or the callable returns no ``nn.Module`` or logits of
        another shape than ``(batch, num_classes)``.
    """
    _, identity = build_user_model(
        reference, input_shape=tuple(input_shape), num_classes=num_classes
    )
    return ModelSpec(
        name=reference,
        input_shape=tuple(input_shape),
        num_classes=num_classes,
        fix_model=fix_model,
        identity=identity,
    )


class MLP(nn.Module):  # type: ignore[misc]  # nn.Module is Any: mypy skips torch (pyproject)
    """Fully connected network for tabular data: Linear-act blocks, then logits."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        act = ACTIVATIONS[spec.activation]
        widths = [math.prod(spec.input_shape), *spec.hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for w_in, w_out in itertools.pairwise(widths):
            layers += [nn.Linear(w_in, w_out), act()]
        layers.append(nn.Linear(widths[-1], spec.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits for the batch ``x``."""
        return self.net(x)


class CNN(nn.Module):  # type: ignore[misc]  # nn.Module is Any: mypy skips torch (pyproject)
    """Small image CNN: conv–GroupNorm–conv–pool–fc–fc (no BatchNorm, for DP)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        channels, height, width = spec.input_shape
        conv1, conv2, fc = spec.hidden or (16, 32, 64)
        act = ACTIVATIONS[spec.activation]
        groups = math.gcd(spec.groups, conv1)
        self.features = nn.Sequential(
            nn.Conv2d(channels, conv1, kernel_size=3, padding=1),
            nn.GroupNorm(groups, conv1),
            act(),
            nn.Conv2d(conv1, conv2, kernel_size=3, padding=1),
            act(),
            nn.MaxPool2d(2),
        )
        flat = conv2 * (height // 2) * (width // 2)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, fc), act(), nn.Linear(fc, spec.num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits for the batch ``x``."""
        return self.classifier(self.features(x))


class CNN1D(nn.Module):  # type: ignore[misc]  # nn.Module is Any: mypy skips torch (pyproject)
    """1-D CNN for sensor series: two conv–GroupNorm–act blocks, global average pool.

    The second convolution is dilated (a small temporal convolutional network):
    two layers of kernel 5 see 13 steps. Global pooling makes the classifier
    independent of the series length, and GroupNorm keeps it DP-compatible.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        channels, _ = spec.input_shape
        conv1, conv2 = spec.hidden or (16, 32)
        act = ACTIVATIONS[spec.activation]
        self.features = nn.Sequential(
            nn.Conv1d(channels, conv1, kernel_size=5, padding=2),
            nn.GroupNorm(math.gcd(spec.groups, conv1), conv1),
            act(),
            nn.Conv1d(conv1, conv2, kernel_size=5, padding=4, dilation=2),
            nn.GroupNorm(math.gcd(spec.groups, conv2), conv2),
            act(),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(conv2, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits for the batch ``x`` of shape ``(B, channels, steps)``."""
        return self.classifier(self.features(x))

    def for_export(self) -> nn.Module:
        """Return a copy computing the same function with 2-D convolutions, in eval mode.

        ONNX Runtime's CPU build runs 2-D convolutions in its blocked (NCHWc)
        layout, which it has no 1-D counterpart for: the same convolutions as
        ``(1, kernel)`` 2-D ones ran in 22 µs at batch 1 against 28 µs
        (basic-motions, one thread). The pooling becomes one mean over both
        axes, where ``AdaptiveAvgPool1d`` + ``Flatten`` export as four ops.
        """
        return _ExportCNN1D(self).eval()


class _ExportCNN1D(nn.Module):  # type: ignore[misc]  # nn.Module is Any: mypy skips torch (pyproject)
    """:class:`CNN1D` on a ``(B, channels, 1, steps)`` view, with ``(1, k)`` Conv2d."""

    def __init__(self, model: CNN1D) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for layer in model.features:
            if isinstance(layer, nn.Conv1d):
                conv = nn.Conv2d(
                    layer.in_channels,
                    layer.out_channels,
                    kernel_size=(1, layer.kernel_size[0]),
                    padding=(0, layer.padding[0]),
                    dilation=(1, layer.dilation[0]),
                    stride=(1, layer.stride[0]),
                )
                with torch.no_grad():
                    conv.weight.copy_(layer.weight.unsqueeze(2))
                    conv.bias.copy_(layer.bias)
                layers.append(conv)
            elif not isinstance(layer, nn.AdaptiveAvgPool1d | nn.Flatten):
                layers.append(layer)  # GroupNorm, activations: rank-agnostic
        self.features = nn.Sequential(*layers)
        self.classifier = model.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits for the batch ``x`` of shape ``(B, channels, steps)``."""
        pooled = self.features(x.unsqueeze(2)).mean(dim=(2, 3))
        return self.classifier(pooled)


class GRU(nn.Module):  # type: ignore[misc]  # nn.Module is Any: mypy skips torch (pyproject)
    """One-layer GRU over the steps, logits from its last hidden state.

    The recurrent layer is Opacus's ``DPGRU`` (per-step linear layers whose
    per-sample gradients Opacus and the fast DP path can compute); its weights
    have ``nn.GRU``'s names and layout, so :meth:`for_export` swaps in an
    ``nn.GRU`` that exports as one ONNX ``GRU`` operator.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        from opacus.layers import DPGRU  # Opacus loads only for this model

        channels, _ = spec.input_shape
        (hidden,) = spec.hidden or (32,)
        self.rnn = DPGRU(channels, hidden, batch_first=True)
        self.classifier = nn.Linear(hidden, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits for the batch ``x`` of shape ``(B, channels, steps)``."""
        _, last = self.rnn(x.transpose(1, 2))
        return self.classifier(last[-1])

    def for_export(self) -> nn.Module:
        """Return a copy computing the same function with ``nn.GRU``, in eval mode."""
        clone = _ExportGRU(self.rnn.input_size, self.rnn.hidden_size, self.classifier)
        clone.rnn.load_state_dict(self.rnn.state_dict())
        return clone.eval()


class _ExportGRU(nn.Module):  # type: ignore[misc]  # nn.Module is Any: mypy skips torch (pyproject)
    """:class:`GRU` with PyTorch's fused ``nn.GRU`` (ONNX: a single ``GRU`` op)."""

    def __init__(self, channels: int, hidden: int, classifier: nn.Module) -> None:
        super().__init__()
        self.rnn = nn.GRU(channels, hidden, batch_first=True)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits for the batch ``x`` of shape ``(B, channels, steps)``."""
        _, last = self.rnn(x.transpose(1, 2))
        return self.classifier(last[-1])


def for_export(model: nn.Module) -> nn.Module:
    """Return the module to hand an exporter: the same function, exportable layers."""
    swap = getattr(model, "for_export", None)
    return swap() if callable(swap) else model


def build_model(spec: ModelSpec, *, model_seed: int | None = None) -> nn.Module:
    """Instantiate the network ``spec`` describes.

    Parameters
    ----------
    spec : ModelSpec
        The architecture.
    model_seed : int, optional
        Seed for the initial weights, so every party can build identical ones.
        With ``spec.fix_model``, Opacus's fix follows and is deterministic too.

    Raises
    ------
    ModelError
        A user's model whose code here differs from ``spec.identity`` (one line
        naming both), or that cannot be built (see :func:`user_spec`).
    """
    if model_seed is not None:
        torch.manual_seed(model_seed)
    if spec.identity is not None:
        model, _ = build_user_model(
            spec.name,
            input_shape=spec.input_shape,
            num_classes=spec.num_classes,
            expected=spec.identity,
        )
    else:
        kinds: dict[str, type[nn.Module]] = {
            "mlp": MLP,
            "cnn": CNN,
            "cnn1d": CNN1D,
            "gru": GRU,
        }
        if spec.name == FIXED_FEATURES_MODEL:
            (width,) = spec.hidden or (default_width(spec.input_shape),)
            model = FixedFeaturesLinear(spec.input_shape, spec.num_classes, width)
        else:
            model = kinds[spec.name](spec)
    if spec.fix_model:
        from fedge.shared.private_model import fix_private_model

        model = fix_private_model(model)
    return model
