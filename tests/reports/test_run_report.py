"""Plots and report.md from hand-made run folders."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest

from fedge.cli.app import main
from fedge.reports import run_report
from fedge.reports.run_report import write_report, write_report_plots
from fedge.shared.errors import FedgeError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

BASIC_CSV = """round,central-loss,central-accuracy,central-f1,train-loss,sampled,replies,failures,round-time-s
0,2.30,0.1000,0.0500,,,,,
1,1.20,0.6000,0.5500,1.50,4,4,0,1.25
2,0.80,0.7500,0.7400,0.90,4,3,1,0.50
3,0.60,0.8125,0.8000,0.70,4,4,0,0.25
"""

FULL_CSV = """round,central-loss,central-accuracy,central-f1,fed-eval-accuracy,fed-eval-loss,train-loss,sampled,replies,failures,dropped,refused,epsilon-max,epsilon-mean,round-time-s
0,2.30,0.1000,0.0500,,,,,,,,,,,
1,1.20,0.6000,0.5500,0.5800,1.30,1.50,5,5,0,1,0,1.000,0.800,1.0
2,0.80,0.7500,0.7400,0.7100,0.90,0.90,5,4,1,1,0,1.750,1.500,1.0
3,0.60,0.8125,0.8000,0.8000,0.70,0.70,5,5,0,1,1,2.500,2.125,1.0
"""


def run_folder(tmp_path: Path, csv: str, **files: object) -> Path:
    run_dir = tmp_path / "run-a"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text(csv)
    for name, payload in files.items():
        path = run_dir / name.replace("_", ".")
        if isinstance(payload, str):
            path.write_text(payload)
        else:
            path.write_text(json.dumps(payload))
    return run_dir


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    height, width, _ = matplotlib.image.imread(path).shape
    assert width > 300 and height > 200


CONFIG = {
    "run-config": {
        "dataset": "digits",
        "partitioning": "dirichlet",
        "dirichlet-alpha": 0.1,
        "strategy": "fedmedian",
        "num-server-rounds": 3,
        "local-epochs": 2,
        "batch-size": 16,
        "learning-rate": 0.05,
        "dp-mode": "none",
        "target-epsilon": 8.0,
    }
}


def test_basic_run_gets_plots_and_a_report_with_the_final_accuracy(tmp_path):
    run_dir = run_folder(
        tmp_path,
        BASIC_CSV,
        config_json=CONFIG,
        status_json={"state": "complete", "message": ""},
    )

    report = write_report(run_dir)

    assert report == run_dir / "report.md"
    plots = sorted(p.name for p in (run_dir / "plots").iterdir())
    assert plots == ["accuracy.png", "loss.png", "participation.png"]  # no ε columns
    for name in plots:
        assert_png(run_dir / "plots" / name)
    text = report.read_text()
    assert "# fedge run `run-a`" in text
    assert "Status: **complete**" in text
    assert "- central accuracy: **0.8125**" in text
    assert "- central loss: **0.6000**" in text
    assert "- best central accuracy: 0.8125 (round 3)" in text
    assert "- failed replies, all rounds: 1" in text
    assert "- time in rounds: 2.0 s" in text
    assert "| partitioning | dirichlet (α = 0.1) |" in text
    assert "| strategy | fedmedian |" in text
    assert "| clients | 4 |" in text  # from the sampled column: no model.json
    assert "No differential privacy in this run (dp-mode = none)." in text
    for name in plots:
        assert f"](plots/{name})" in text
    # One table row per round, counts as integers, missing values as a dash.
    assert "| 2 | 0.7500 | 0.8000 | 0.7400 | 0.9000 | 4 | 3 | 1 | 0.50 |" in text
    assert "| 0 | 0.1000 | 2.3000 | 0.0500 | – | – | – | – | – |" in text


def test_plots_drawn_ahead_are_not_drawn_again_and_the_report_shows_them(
    tmp_path, monkeypatch
):
    run_dir = run_folder(tmp_path, BASIC_CSV, config_json=CONFIG)
    plots = write_report_plots(run_dir)
    drawn_again = []
    monkeypatch.setattr(run_report, "write_plots", lambda *a: drawn_again.append(a))

    text = write_report(run_dir, plots=plots).read_text()

    assert drawn_again == []
    assert sorted(p.name for p in plots) == [
        "accuracy.png",
        "loss.png",
        "participation.png",
    ]
    for plot in plots:
        assert_png(plot)
        assert f"](plots/{plot.name})" in text


def test_privacy_and_participation_columns_get_their_plots_and_summary(tmp_path):
    config = {"run-config": {**CONFIG["run-config"], "dp-mode": "sample"}}
    run_dir = run_folder(
        tmp_path,
        FULL_CSV,
        config_json=config,
        model_json={
            "provenance": {"num-clients": 5},
            "privacy": {"dp-mode": "sample", "delta": 1e-5},
        },
    )

    text = write_report(run_dir).read_text()

    plots = sorted(p.name for p in (run_dir / "plots").iterdir())
    assert plots == ["accuracy.png", "epsilon.png", "loss.png", "participation.png"]
    for name in plots:
        assert_png(run_dir / "plots" / name)
    assert "- largest client ε after round 3: **2.500**" in text
    assert "- mean client ε: 2.125" in text
    assert "- budget (target ε per client): 8.0" in text
    assert "- model metadata `delta`: 1e-05" in text
    assert "- federated accuracy: **0.8000**" in text
    assert "- dropped updates, all rounds: 3" in text
    assert "- refusals, all rounds: 1" in text
    assert "| clients | 5 |" in text  # model.json wins over the sampled column
    header = next(line for line in text.splitlines() if line.startswith("| round |"))
    assert header == (
        "| round | central-accuracy | central-loss | central-f1 | fed-eval-accuracy "
        "| train-loss | sampled | replies | failures | dropped | refused "
        "| epsilon-max | epsilon-mean | round-time-s |"
    )


def test_faults_and_per_client_details_are_summarised(tmp_path):
    details = [
        {
            "round": 1,
            "clients": [
                {"node-id": 7, "status": "aggregated"},
                {"node-id": 9, "status": "dropped", "problem": "'w' is not finite"},
            ],
        },
        {
            "round": 2,
            "clients": [
                {"node-id": 7, "status": "aggregated"},
                {"node-id": 9, "status": "dropped", "problem": "later problem"},
            ],
        },
    ]
    run_dir = run_folder(
        tmp_path,
        BASIC_CSV,
        faults_json={
            "fault-attack": "sign-flip",
            "fault-attackers": 2,
            "fault-scale": 10.0,
            "fault-dropout": 0.3,
            "fault-seed": 4,
            "fault-wipe-state": "3@2,0@4",
        },
        metrics_jsonl="\n".join(json.dumps(d) for d in details) + "\nnot json\n",
    )

    text = write_report(run_dir).read_text()

    assert "- 2 attacking clients send `sign-flip` updates with k = 10.0." in text
    assert "- Each client fails a round with probability 0.3." in text
    assert "- Fault seed: 4." in text
    assert (
        "- Privacy state wiped before training, as a lost disk (the node's state "
        "folder and context.state), PARTITION@ROUND: `3@2,0@4`." in text
    )
    assert "| node | aggregated | dropped | first problem |" in text
    assert "| 7 | 2 | 0 |  |" in text
    assert "| 9 | 0 | 2 | 'w' is not finite |" in text


def test_a_folder_from_before_the_contract_reports_its_config_and_epsilon(tmp_path):
    # config.json with only the nested "config" section, and model.json naming
    # the largest ε "max-epsilon", as fedge wrote them before.
    run_dir = run_folder(
        tmp_path,
        BASIC_CSV,
        config_json={
            "config": {
                "data": {"dataset": "digits", "partitioning": "shards"},
                "strategy": {"name": "krum"},
                "dp": {"mode": "sample", "target_epsilon": 4.0},
            }
        },
        model_json={"privacy": {"dp-mode": "sample", "max-epsilon": 3.5}},
    )

    text = write_report(run_dir).read_text()

    assert "| strategy | krum |" in text
    assert "| differential privacy | sample, target ε = 4.0 |" in text
    assert "- model metadata `epsilon-max`: 3.5" in text
    assert "max-epsilon" not in text


def test_report_without_side_files_still_works(tmp_path):
    run_dir = run_folder(tmp_path, "round,central-accuracy,central-loss\n0,0.1,2.3\n")

    text = write_report(run_dir).read_text()

    assert "Status: **unknown**" in text
    assert "No config.json in the run folder." in text
    assert "- central accuracy: **0.1000**" in text
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == [
        "accuracy.png",
        "loss.png",
    ]


def test_missing_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(
        FedgeError, match=r"has no metrics\.csv: not a fedge run folder"
    ):
        write_report(tmp_path)


@pytest.mark.parametrize("content", ["", "round,central-accuracy\n"])
def test_metrics_without_rounds_is_a_clear_error(tmp_path, content):
    (tmp_path / "metrics.csv").write_text(content)

    with pytest.raises(FedgeError, match=r"metrics\.csv holds no rounds"):
        write_report(tmp_path)


def test_fedge_report_command_rewrites_the_report(tmp_path, capsys):
    run_dir = run_folder(tmp_path, BASIC_CSV)

    code = main(["report", str(run_dir)])

    assert code == 0
    assert (run_dir / "report.md").is_file()
    assert f"report: {run_dir / 'report.md'}" in capsys.readouterr().out


def test_fedge_report_on_a_non_run_folder_exits_2_with_one_line(tmp_path, capsys):
    code = main(["report", str(tmp_path / "nope")])

    err = capsys.readouterr().err
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("fedge report: error: ")
    assert "has no metrics.csv" in line


def test_columns_without_any_value_are_left_out_of_the_table(tmp_path):
    csv = "round,central-accuracy,epsilon-max,sampled\n0,0.1,,\n1,0.5,,3\n"
    run_dir = run_folder(tmp_path, csv)

    text = write_report(run_dir).read_text()

    assert "| round | central-accuracy | sampled |" in text
    assert "epsilon-max" not in text


def test_a_client_whose_loss_is_not_finite_is_reported_as_not_available(tmp_path):
    # An attacked model's loss overflows; metrics.jsonl stores it as null.
    evaluation = {
        "round": 3,
        "client-evaluation": [
            {"node-id": 4, "accuracy": 0.5, "loss": 0.25, "num-examples": 8},
            {"node-id": 5, "accuracy": 0.0, "loss": None, "num-examples": 13},
        ],
    }
    run_dir = run_folder(
        tmp_path, BASIC_CSV, metrics_jsonl=json.dumps(evaluation) + "\n"
    )

    text = write_report(run_dir).read_text()

    assert "| 4 |  | 8 | 0.5000 | 0.2500 |" in text
    assert "| 5 |  | 13 | 0.0000 | n/a |" in text


@pytest.mark.parametrize(("max_clients", "sampled"), [(1, True), (0, False)])
def test_the_report_says_when_per_client_figures_come_from_a_sample(
    tmp_path, max_clients, sampled
):
    evaluation = {
        "round": 3,
        "client-evaluation": [
            {"node-id": 4, "accuracy": 0.5, "loss": 0.25, "num-examples": 8}
        ],
    }
    run_dir = run_folder(
        tmp_path,
        BASIC_CSV,
        metrics_jsonl=json.dumps(evaluation) + "\n",
        config_json={"run-config": {"fairness-max-clients": max_clients}},
        model_json={"provenance": {"num-clients": 2}},
    )

    text = write_report(run_dir).read_text()

    sentence = (
        "A seeded random sample of 1 of 2 nodes was asked (fairness-max-clients = 1)"
    )
    assert (sentence in text) == sampled
    assert "| 4 |  | 8 | 0.5000 | 0.2500 |" in text


def test_the_local_training_row_says_where_auto_settings_come_from():
    from fedge.reports.run_report import _local_training

    given = {"local-epochs": 2, "batch-size": 64, "learning-rate": 0.1}
    auto = {"local-epochs": "auto", "batch-size": "auto", "learning-rate": 0.5}

    assert _local_training(given) == "2 epochs, batch 64, lr 0.1"
    assert _local_training(auto) == (
        "epochs auto, batch auto (per node: fedge privacy --suggest), lr 0.5"
    )
