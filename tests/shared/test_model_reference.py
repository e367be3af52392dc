"""A user's own model: resolving MODULE:CALLABLE, its identity, and every refusal."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from fedge.shared.config import from_run_config
from fedge.shared.errors import ConfigError, ModelError
from fedge.shared.model_reference import (
    ModelIdentity,
    build_user_model,
    check_same_identity,
    resolve_factory,
    shipped_module_name,
)
from fedge.shared.models import ModelSpec, build_model, default_spec

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "own_nets.py"
NET_TEMPLATE = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, *, input_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(input_shape[0], num_classes)

    def forward(self, x):
        return {output}
"""


NET = NET_TEMPLATE.format(output="self.fc(x)")


def _net_returning(folder: Path, output: str) -> Path:
    """A ``nets.py`` whose Net's forward returns ``output`` (of ``self.fc(x)``)."""
    return _write(folder, "nets.py", NET_TEMPLATE.format(output=output))


def _write(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def _build(
    reference: str, shape: tuple[int, ...] = (4,), classes: int = 3
) -> nn.Module:
    model, _ = build_user_model(reference, input_shape=shape, num_classes=classes)
    return model


# ------------------------------------------------------------------ resolving
def test_a_py_file_builds_and_its_identity_is_the_files_sha256(tmp_path: Path) -> None:
    path = _write(tmp_path, "nets.py", NET)
    model, identity = build_user_model(f"{path}:Net", input_shape=(4,), num_classes=3)
    assert model(torch.zeros(5, 4)).shape == (5, 3)
    assert identity == ModelIdentity(
        reference=f"{path}:Net",
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
    )


def test_a_module_on_the_path_builds_without_a_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path, "own_model_on_path.py", NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    _, identity = build_user_model(
        "own_model_on_path:Net", input_shape=(4,), num_classes=3
    )
    assert (identity.package, identity.version) == ("", "")
    assert (
        identity.sha256
        == hashlib.sha256((tmp_path / "own_model_on_path.py").read_bytes()).hexdigest()
    )


def test_an_installed_package_records_its_distribution_and_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `pip install` leaves: the package and its dist-info beside it.
    (tmp_path / "own_pkg_nets").mkdir()
    _write(tmp_path / "own_pkg_nets", "__init__.py", NET)
    dist = tmp_path / "own_pkg_nets-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: own-pkg-nets\nVersion: 1.2.3\n"
    )
    (dist / "top_level.txt").write_text("own_pkg_nets\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _, identity = build_user_model("own_pkg_nets:Net", input_shape=(4,), num_classes=3)
    assert (identity.package, identity.version) == ("own-pkg-nets", "1.2.3")


def test_the_sha256_is_of_the_file_that_defines_the_callable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Re-exported from another module: the code that runs is that module's.
    _write(tmp_path, "own_defining.py", NET)
    _write(tmp_path, "own_reexport.py", "from own_defining import Net\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _, identity = resolve_factory("own_reexport:Net")
    assert (
        identity.sha256
        == hashlib.sha256((tmp_path / "own_defining.py").read_bytes()).hexdigest()
    )


def test_a_shipped_copy_on_the_path_is_imported_instead_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a simulation worker sees it: the app folder holds the copy, the
    # user's path does not exist there.
    reference = f"{tmp_path / 'gone' / 'nets.py'}:Net"
    app = tmp_path / "app"
    app.mkdir()
    copy = _write(app, f"{shipped_module_name(reference)}.py", NET)
    monkeypatch.syspath_prepend(str(app))
    _, identity = resolve_factory(reference)
    assert identity.sha256 == hashlib.sha256(copy.read_bytes()).hexdigest()


def test_the_shipped_name_cannot_be_a_users_module_name() -> None:
    name = shipped_module_name("/home/a/nets.py:Net")
    assert name.startswith("fedge_model_") and name.isidentifier()
    assert name != shipped_module_name("/home/b/nets.py:Net")


def test_the_fixture_architectures_give_logits() -> None:
    residual = _build(f"{FIXTURE}:ResidualMLP", (64,), 10)
    depthwise = _build(f"{FIXTURE}:DepthwiseConvNet", (1, 8, 8), 10)
    factory = _build(f"{FIXTURE}:residual_mlp", (64,), 10)
    assert residual(torch.zeros(3, 64)).shape == (3, 10)
    assert depthwise(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert factory.head.in_features == 16


def test_the_shape_check_moves_no_running_statistics(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "bn.py",
        """
        from torch import nn
        def net(*, input_shape, num_classes):
            return nn.Sequential(nn.BatchNorm1d(input_shape[0]),
                                 nn.Linear(input_shape[0], num_classes))
        """,
    )
    model = _build(f"{path}:net")
    assert model.training
    assert int(model[0].num_batches_tracked) == 0


# ------------------------------------------------------------------ refusals
def test_a_module_that_cannot_be_imported_is_refused() -> None:
    with pytest.raises(
        ModelError, match=r"module 'no_such_module_x' cannot be imported.*PYTHONPATH"
    ):
        _build("no_such_module_x:Net")


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"file .*missing\.py not found"):
        _build(f"{tmp_path / 'missing.py'}:Net")


def test_a_module_that_raises_on_import_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "boom.py", "x = 1 / 0\n")
    with pytest.raises(
        ModelError,
        match=r"importing .*boom\.py raised ZeroDivisionError: division by zero",
    ):
        _build(f"{path}:Net")


def test_a_module_whose_own_import_is_missing_raised_on_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The module exists; what it imports does not: not "cannot be imported".
    _write(tmp_path, "own_needs_dep.py", "import not_installed_dep_x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ModelError,
        match=r"importing own_needs_dep raised ModuleNotFoundError: .*not_installed_dep_x",
    ):
        _build("own_needs_dep:Net")


def test_a_missing_callable_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "nets.py", NET)
    with pytest.raises(
        ModelError, match=r"has no attribute 'Nett'; expected a callable"
    ):
        _build(f"{path}:Nett")


def test_an_attribute_that_is_not_callable_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "nets.py", "Net = 3\n")
    with pytest.raises(ModelError, match=r"'Net' .* is a int, not a callable"):
        _build(f"{path}:Net")


def test_a_callable_that_raises_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "nets.py", "def Net(*, input_shape):\n    pass\n")
    with pytest.raises(
        ModelError,
        match=r"Net\(input_shape=\(4,\), num_classes=3\) raised TypeError",
    ):
        _build(f"{path}:Net")


def test_a_callable_returning_no_module_is_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "nets.py", "def Net(*, input_shape, num_classes):\n    return [1]\n"
    )
    with pytest.raises(
        ModelError, match=r"returned a list, expected a torch\.nn\.Module"
    ):
        _build(f"{path}:Net")


def test_logits_of_the_wrong_shape_are_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "nets.py",
        """
        from torch import nn
        def Net(*, input_shape, num_classes):
            return nn.Linear(input_shape[0], num_classes + 1)
        """,
    )
    with pytest.raises(
        ModelError,
        match=r"zero batch of shape \(2, 4\) gave output of shape \(2, 4\), "
        r"expected logits of shape \(2, 3\)",
    ):
        _build(f"{path}:Net")


def test_a_model_that_drops_the_batch_axis_is_refused(tmp_path: Path) -> None:
    path = _net_returning(tmp_path, "self.fc(x).mean(dim=0)")
    with pytest.raises(ModelError, match=r"gave output of shape \(3,\)"):
        _build(f"{path}:Net")


def test_a_forward_pass_that_fails_is_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "nets.py",
        """
        from torch import nn
        def Net(*, input_shape, num_classes):
            return nn.Linear(input_shape[0] + 1, num_classes)
        """,
    )
    with pytest.raises(
        ModelError, match=r"zero batch of shape \(2, 4\) raised RuntimeError"
    ):
        _build(f"{path}:Net")


def test_an_output_that_is_no_tensor_is_refused(tmp_path: Path) -> None:
    path = _net_returning(tmp_path, '{"logits": self.fc(x)}')
    with pytest.raises(
        ModelError, match=r"returned a dict, expected a tensor of logits"
    ):
        _build(f"{path}:Net")


# ------------------------------------------------------------------ identity
def test_a_node_with_other_code_refuses_naming_both_identities(tmp_path: Path) -> None:
    path = _write(tmp_path, "nets.py", NET)
    spec = default_spec(f"{path}:Net", (4,), 3)
    sent = spec.identity
    assert sent is not None
    path.write_text(NET + "\n# edited on this node\n")
    local = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ModelError) as caught:
        build_model(ModelSpec.from_json(spec.to_json()))
    message = str(caught.value)
    assert "\n" not in message
    assert f"coordinator sent {path}:Net (sha256 {sent.sha256})" in message
    assert f"this machine has {path}:Net (sha256 {local})" in message


def test_a_differing_package_version_is_a_different_identity() -> None:
    sent = ModelIdentity("nets:Net", "ab" * 32, "nets", "1.0")
    with pytest.raises(
        ModelError, match=r"package nets 1\.0\), this machine has .*package nets 1\.1\)"
    ):
        check_same_identity(sent, ModelIdentity("nets:Net", "ab" * 32, "nets", "1.1"))


def test_a_user_spec_round_trips_through_json_and_a_builtin_spec_is_unchanged(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path, "nets.py", NET)
    spec = default_spec(f"{path}:Net", (4,), 3)
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert spec.is_user_model
    assert (
        json.loads(spec.to_json())["identity"]["sha256"]
        == hashlib.sha256(path.read_bytes()).hexdigest()
    )
    assert "identity" not in default_spec("mlp", (4,), 3).to_dict()


def test_a_spec_naming_a_user_model_without_identity_is_refused() -> None:
    with pytest.raises(ModelError, match=r"'nets:Net' needs its identity"):
        ModelSpec(name="nets:Net", input_shape=(4,), num_classes=3)


# ------------------------------------------------------------------ run config
@pytest.mark.parametrize(
    "model", ["nets:Net", "/abs/nets.py:Net", "pkg.sub:make.net", "auto", "gru"]
)
def test_the_run_config_takes_a_reference_or_a_builtin(model: str) -> None:
    assert from_run_config({"model": model}, fill_defaults=True).train.model == model


@pytest.mark.parametrize("model", ["nets:", ":Net", "nets:Net-2", "nets:1Net"])
def test_a_malformed_reference_is_refused(model: str) -> None:
    with pytest.raises(ConfigError, match=r"is not MODULE:CALLABLE"):
        from_run_config({"model": model}, fill_defaults=True)


def test_an_unknown_builtin_is_refused_pointing_at_references() -> None:
    with pytest.raises(
        ConfigError, match=r"or MODULE:CALLABLE \(your own model\), got 'resnet'"
    ):
        from_run_config({"model": "resnet"}, fill_defaults=True)


def test_a_callable_without_source_is_refused() -> None:
    # A function compiled into the interpreter: no file to take a SHA-256 of.
    with pytest.raises(
        ModelError, match=r"'builtins:len': module 'builtins' .* has no source file"
    ):
        resolve_factory("builtins:len")


def test_an_incomplete_identity_is_refused() -> None:
    with pytest.raises(
        ModelError, match=r"model identity is incomplete: KeyError\('sha256'\)"
    ):
        ModelIdentity.from_dict({"reference": "nets:Net"})
