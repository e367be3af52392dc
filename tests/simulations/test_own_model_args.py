"""``fedge simulate --model MODULE:CALLABLE``: paths, shipping, and refusals that
come before any process starts. Nothing here starts Flower."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import pytest

import fedge.simulations.simulate as sim
from fedge.cli.app import build_parser, main
from fedge.cli.simulate import resolve_arguments
from fedge.shared.config import from_run_config
from fedge.shared.errors import ModelError
from fedge.shared.model_reference import shipped_module_name
from fedge.simulations.fault_config import FaultConfig
from fedge.simulations.scenario_file import load_scenario

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "own_nets.py"
WRONG_LOGITS = """
from torch import nn
def Net(*, input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes + 1))
"""


def parse(*argv: str):
    return build_parser("simulate").parse_args(["simulate", *argv])


def test_a_relative_py_path_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    overrides = resolve_arguments(parse("--model", "nets.py:Net")).overrides
    assert overrides == {"model": f"{tmp_path / 'nets.py'}:Net"}


@pytest.mark.parametrize("model", ["mlp", "auto", "pkg.nets:make_net"])
def test_a_builtin_or_module_name_is_passed_unchanged(model: str) -> None:
    assert resolve_arguments(parse("--model", model)).overrides == {"model": model}


def test_a_scenarios_py_path_is_relative_to_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "scenarios").mkdir()
    scenario = tmp_path / "scenarios" / "own.toml"
    scenario.write_text('model = "../nets/own.py:Net"\n')
    assert load_scenario(scenario)["model"] == f"{tmp_path / 'nets' / 'own.py'}:Net"


def test_preflight_builds_the_model_on_the_datas_shape(tmp_path: Path) -> None:
    bad = tmp_path / "nets.py"
    bad.write_text(WRONG_LOGITS)
    config = from_run_config({"model": f"{bad}:Net"}, fill_defaults=True)
    with pytest.raises(
        ModelError,
        match=r"zero batch of shape \(2, 1, 8, 8\) gave output of shape \(2, 11\), "
        r"expected logits of shape \(2, 10\)",
    ):
        sim.preflight(config, num_clients=2)


def test_the_fixture_model_passes_preflight() -> None:
    config = from_run_config(
        {"model": f"{FIXTURE}:DepthwiseConvNet"}, fill_defaults=True
    )
    sim.preflight(config, num_clients=2)


def test_a_bad_model_writes_nothing_into_an_existing_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "runs" / "earlier"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.csv").write_text("round\n0\n")
    before = sorted(p.name for p in run_dir.iterdir())
    monkeypatch.setattr(sim, "superlink_for_run", None)  # must fail before any process
    with pytest.raises(ModelError, match=r"module 'no_such_nets_x' cannot be imported"):
        sim.simulate(
            {"model": "no_such_nets_x:Net", "resume": True},
            num_clients=2,
            output_dir=tmp_path / "runs",
            run_name="earlier",
            echo=lambda *_: None,
        )
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_with_own_data_a_bad_model_is_refused_before_the_data_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sklearn.datasets import load_breast_cancer

    from fedge.simulations.own_data import OwnData

    data = tmp_path / "clinics.csv"
    frame = load_breast_cancer(as_frame=True).frame
    frame.to_csv(data, index=False)
    bad = tmp_path / "nets.py"
    bad.write_text("raise RuntimeError('not on this machine')\n")
    monkeypatch.setattr(sim, "superlink_for_run", None)
    with pytest.raises(
        ModelError, match=r"raised RuntimeError: not on this machine; fix the module"
    ):
        sim.simulate(
            {"model": f"{bad}:Net", "label-column": "target"},
            num_clients=2,
            output_dir=tmp_path / "runs",
            own_data=OwnData(data=str(data)),
            run_name="own",
            echo=lambda *_: None,
        )
    assert not (tmp_path / "runs").exists()


def test_the_cli_refuses_a_bad_model_in_one_line_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "simulate",
            "--model",
            f"{FIXTURE}:NoSuchNet",
            "--output-dir",
            str(tmp_path),
            "--clients",
            "2",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "has no attribute 'NoSuchNet'" in err
    assert not any(tmp_path.iterdir())


def test_a_py_model_is_shipped_inside_the_submitted_app(tmp_path: Path) -> None:
    reference = f"{FIXTURE}:ResidualMLP"
    app = sim._app_to_submit(tmp_path, FaultConfig(), reference)
    shipped = app / f"{shipped_module_name(reference)}.py"
    assert app != sim.APP_DIR
    assert (
        hashlib.sha256(shipped.read_bytes()).digest()
        == hashlib.sha256(FIXTURE.read_bytes()).digest()
    )
    components = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"][
        "app"
    ]["components"]
    assert components == {
        "serverapp": "fedge.server.server_app:app",
        "clientapp": "fedge.client.client_app:app",
    }


def test_a_module_name_model_submits_a_slim_copy_of_the_app(tmp_path: Path) -> None:
    app = sim._app_to_submit(tmp_path, FaultConfig(), "pkg.nets:Net")

    assert app != sim.APP_DIR
    # Only what the app is: flwr run walks every file of the folder it submits.
    assert sorted(p.name for p in app.iterdir()) == [
        "README.md",
        "fedge",
        "pyproject.toml",
    ]
    assert not any(p.is_symlink() for p in app.rglob("*"))
    assert (app / "fedge" / "server" / "server_app.py").is_file()


def test_shipping_needs_a_py_file(tmp_path: Path) -> None:
    from fedge.shared.errors import FedgeError
    from fedge.simulations.fault_app import ship_model_file

    with pytest.raises(FedgeError, match=r"model 'pkg.nets:Net': no \.py file to ship"):
        ship_model_file(tmp_path, "pkg.nets:Net")
