"""``fedge.Run`` on a run folder written as the coordinator writes one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure

import fedge
from fedge.shared.config import from_run_config
from fedge.shared.errors import FedgeError
from fedge.shared.run_folder import save_run_config, write_status

ROOT = Path(__file__).resolve().parents[2]


def write_run(run_dir: Path, *, state: str = "complete", accuracy: float = 0.8) -> Path:
    run_dir.mkdir(parents=True)
    write_status(run_dir, state, final_accuracy=accuracy)
    save_run_config(
        run_dir, from_run_config({"num-server-rounds": 2}, fill_defaults=True)
    )
    (run_dir / "metrics.csv").write_text(
        "round,central-accuracy,central-loss,replies,sampled,epsilon-max\n"
        "0,0.1,2.3,,,\n"
        f"1,0.5,1.2,2,2,1.5\n"
        f"2,{accuracy},0.7,2,2,2.5\n"
    )
    records = [
        {"round": 0, "central-accuracy": 0.1},
        {
            "round": 1,
            "clients": [
                {"node-id": 11, "num-examples": 40, "epsilon": 1.5},
                {"node-id": 12, "num-examples": 60, "epsilon": 1.25},
            ],
        },
        {
            "round": 2,
            "clients": [
                {"node-id": 11, "num-examples": 40, "epsilon": 2.5},
                {"node-id": 12, "num-examples": 60, "epsilon": 2.0},
            ],
            "client-evaluation": [
                {"node-id": 11, "accuracy": 0.75},
                {"node-id": 12, "accuracy": 0.875},
            ],
        },
    ]
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records)
    )
    return run_dir


def test_run_reads_status_config_metrics_and_clients(tmp_path):
    run = fedge.Run(write_run(tmp_path / "a"))

    assert run.status == "complete"
    assert run.name == "a"
    assert run.config["num-server-rounds"] == 2
    assert list(run.metrics.columns[:3]) == [
        "round",
        "central-accuracy",
        "central-loss",
    ]
    assert run.metrics["central-accuracy"].tolist() == [0.1, 0.5, 0.8]
    assert run.accuracy == 0.8
    assert run.clients[["round", "node-id", "epsilon"]].values.tolist() == [
        [1, 11, 1.5],
        [1, 12, 1.25],
        [2, 11, 2.5],
        [2, 12, 2.0],
    ]
    assert run.client_evaluation[["round", "node-id", "accuracy"]].values.tolist() == [
        [2, 11, 0.75],
        [2, 12, 0.875],
    ]
    assert run.epsilon_per_node == {"11": 2.5, "12": 2.0}
    assert Path(run) == tmp_path / "a"


def test_run_plots_are_figures_of_the_recorded_columns(tmp_path):
    import matplotlib.pyplot as plt

    figures_before = plt.get_fignums()
    plots = fedge.Run(write_run(tmp_path / "a")).plots()

    assert set(plots) == {
        "accuracy.png",
        "loss.png",
        "epsilon.png",
        "participation.png",
    }
    assert all(isinstance(f, Figure) for f in plots.values())
    accuracy_line = plots["accuracy.png"].axes[0].lines[0]
    assert list(accuracy_line.get_ydata()) == [0.1, 0.5, 0.8]
    assert plt.get_fignums() == figures_before  # no pyplot state


def test_compare_gives_one_row_per_run_and_round(tmp_path):
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b", accuracy=0.9)

    table = fedge.Run.compare([fedge.Run(a), b])

    assert isinstance(table, pd.DataFrame)
    assert table[["run", "round", "central-accuracy"]].values.tolist() == [
        ["a", 0, 0.1],
        ["a", 1, 0.5],
        ["a", 2, 0.8],
        ["b", 0, 0.1],
        ["b", 1, 0.5],
        ["b", 2, 0.9],
    ]


def test_a_run_that_has_not_recorded_a_round_reads_empty(tmp_path):
    run_dir = tmp_path / "live"
    run_dir.mkdir()
    write_status(run_dir, "running")

    run = fedge.Run(run_dir)

    assert run.status == "running"
    assert run.metrics.empty and "central-accuracy" in run.metrics.columns
    assert run.clients.empty and run.epsilon_per_node == {}
    assert run.accuracy is None
    with pytest.raises(FedgeError, match=r"model_card\.json not found.*running"):
        _ = run.model_card


def test_a_folder_that_is_no_run_is_refused(tmp_path):
    with pytest.raises(FedgeError, match="is not a fedge run folder"):
        fedge.Run(tmp_path)


def test_the_model_card_is_read_as_a_dict(tmp_path):
    run_dir = write_run(tmp_path / "a")
    (run_dir / "model_card.json").write_text(json.dumps({"model": {"name": "mlp"}}))

    assert fedge.Run(run_dir).model_card == {"model": {"name": "mlp"}}


LIGHT_IMPORT = """
import json, sys
import fedge
fedge.EdgeModel, fedge.Run, fedge.simulate, fedge.export, fedge.verify
print(json.dumps({
    m: m in sys.modules for m in ("torch", "flwr", "pandas", "opacus", "onnx")
}))
"""


def test_import_fedge_and_its_edge_model_load_no_torch_flower_or_pandas():
    done = subprocess.run(
        [sys.executable, "-c", LIGHT_IMPORT],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )

    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == dict.fromkeys(("torch", "flwr", "pandas", "opacus", "onnx"), False)


def test_every_public_name_resolves_and_unknown_names_fail():
    for name in fedge.__all__:
        assert getattr(fedge, name) is not None, name
    assert "Run" in dir(fedge)
    with pytest.raises(AttributeError, match="no attribute 'simulat'"):
        fedge.simulat  # noqa: B018
