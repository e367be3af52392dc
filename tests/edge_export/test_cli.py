"""The export, predict, verify and bench-edge commands, called as the dispatcher does."""

from __future__ import annotations

import argparse
import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from fedge.cli import bench_edge as cli_bench_edge
from fedge.cli import export as cli_export
from fedge.cli import predict as cli_predict
from fedge.cli import verify as cli_verify
from fedge.edge_export.onnx_size import size_breakdown
from fedge.edge_export.runtime import EdgeModel
from fedge.edge_export.signing import generate_key_pair
from fedge.shared.datasets import load_builtin

REPO = Path(__file__).resolve().parents[2]


def invoke(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fedge")
    module.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.run(args)


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_export_of_a_run_that_trained_nothing_is_one_line_and_exit_2(tmp_path, capsys):
    from fedge.cli.app import main

    run_dir = tmp_path / "untrained"
    run_dir.mkdir()
    reason = "no round aggregated an update: after round 1 (...)"
    (run_dir / "status.json").write_text(
        json.dumps({"state": "failed", "message": reason})
    )

    code = main(["export", str(run_dir)])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err == (
        f"fedge export: error: {run_dir} has no trained model to export: its run "
        f"failed ({reason}); nothing was exported\n"
    )


def test_predict_writes_label_and_probability_columns(tabular_run, tmp_path):
    eval_csv = json.loads((tabular_run / "config.json").read_text())["config"]["data"][
        "eval_data_path"
    ]
    out = tmp_path / "out" / "predictions.csv"

    code = invoke(
        cli_predict,
        ["predict", str(tabular_run / "model.onnx"), eval_csv, "-o", str(out)],
    )

    assert code == 0
    rows = read_csv_rows(out)
    assert list(rows[0]) == ["label", "probability_no", "probability_yes"]
    assert len(rows) == len(pd.read_csv(eval_csv))
    expected = EdgeModel.load(tabular_run / "model.onnx").predict(pd.read_csv(eval_csv))
    assert [r["label"] for r in rows] == list(expected.labels)
    probabilities = np.array(
        [[float(r["probability_no"]), float(r["probability_yes"])] for r in rows]
    )
    np.testing.assert_array_equal(
        probabilities.astype(np.float32), expected.probabilities
    )


def test_predict_reads_npz_and_accepts_a_run_folder(digits_run, tmp_path, capsys):
    test = load_builtin("digits", "test")
    np.savez(tmp_path / "x.npz", x=test.x[:5] * 16, y=test.y[:5])

    code = invoke(cli_predict, ["predict", str(digits_run), str(tmp_path / "x.npz")])

    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "label," + ",".join(f"probability_{i}" for i in range(10))
    assert len(lines) == 6


def test_predict_reports_bad_input_in_one_line_with_exit_2(
    digits_run, tmp_path, capsys
):
    np.savez(tmp_path / "x.npz", features=np.zeros((2, 64)))

    code = invoke(cli_predict, ["predict", str(digits_run), str(tmp_path / "x.npz")])

    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == (
        f"fedge predict: error: {tmp_path / 'x.npz'} must hold an array 'x' of inputs; "
        "arrays found: ['features']"
    )


def test_predict_never_imports_torch(digits_run, tmp_path, predict_in_fresh_process):
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 1, 8, 8)))

    imports_torch = predict_in_fresh_process(
        [digits_run, tmp_path / "x.npz", "-o", tmp_path / "p.csv"]
    )

    assert not imports_torch
    assert len(read_csv_rows(tmp_path / "p.csv")) == 2


def test_predict_into_a_pipe_whose_reader_left_ends_quietly(digits_run, tmp_path):
    # 5000 rows, far more than a pipe holds, so fedge is still writing when the
    # reader leaves, as with `fedge predict ... | head -1`.
    np.savez(tmp_path / "x.npz", x=np.zeros((5000, 1, 8, 8)))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedge.cli.app",
            "predict",
            str(digits_run),
            str(tmp_path / "x.npz"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert process.stdout is not None and process.stderr is not None
    header = process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read().decode()
    code = process.wait(timeout=120)

    assert header.startswith(b"label,probability_")
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
    assert code == 128 + signal.SIGPIPE  # what a shell reports for `head`'s writer


def test_verify_exit_codes(digits_run, copy_run, capsys):
    assert invoke(cli_verify, ["verify", str(digits_run)]) == 0
    assert "intact" in capsys.readouterr().out

    run_dir = copy_run(digits_run)
    with open(run_dir / "model.onnx", "ab") as f:
        f.write(b"\0")

    assert invoke(cli_verify, ["verify", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "PROBLEM  model.onnx: size" in err
    assert "PROBLEM  model.onnx: sha256" in err
    assert "is not an ONNX file" in err  # a trailing zero byte breaks protobuf
    assert "REFUSED, 3 problem(s)" in err


def test_export_command_prints_the_manifest_and_signs_it(
    digits_run, copy_run, capsys, tmp_path
):
    run_dir = copy_run(digits_run)
    key = tmp_path / "keys" / "exporter"
    public_key = generate_key_pair(key)

    code = invoke(
        cli_export,
        [
            "export",
            str(run_dir),
            "--quantize",
            "none",
            "--format",
            "json",
            "--sign-key",
            str(key),
        ],
    )

    manifest = json.loads(capsys.readouterr().out)
    assert code == 0
    assert manifest["quantization"]["chosen"] is None
    assert "model.int8.onnx" not in manifest["artefacts"]
    assert not (run_dir / "model.int8.onnx").exists()  # the earlier int8 is gone
    assert (run_dir / "manifest.sig").is_file()
    assert (
        invoke(cli_verify, ["verify", str(run_dir), "--public-key", str(public_key)])
        == 0
    )
    assert "intact and signed" in capsys.readouterr().out
    # Re-exported unsigned: the old signature (of the old manifest) is gone.
    assert invoke(cli_export, ["export", str(run_dir), "--quantize", "none"]) == 0
    assert "unsigned (give --sign-key" in capsys.readouterr().out
    assert not (run_dir / "manifest.sig").exists()


def test_bench_edge_measures_all_three_engines_and_writes_json(
    digits_run, tmp_path, capsys
):
    out = tmp_path / "edge.json"

    code = invoke(
        cli_bench_edge,
        [
            "bench-edge",
            str(digits_run),
            "--out",
            str(out),
            "--runs",
            "30",
            "--large-runs",
            "3",
        ],
    )

    figures = json.loads(out.read_text())
    assert code == 0
    optional = {"onnx-optimized"}  # exported only when it ran faster
    assert set(figures["engines"]) - optional == {
        "onnx-fp32",
        "onnx-int8",
        "ort-format",
        "onnx-fixed-batch1",
        "pytorch-eager",
        "onnx-fp32 (session.run)",
    }
    for name, engine in figures["engines"].items():
        assert 0 < engine["batch1-p50-us"] <= engine["batch1-p95-us"]
        if name == "onnx-fixed-batch1":  # takes one example: no batch-256 figure
            assert engine["batch256-throughput-per-s"] is None
        else:
            assert engine["batch256-throughput-per-s"] > 0
    assert (
        figures["engines"]["onnx-int8"]["size-bytes"]
        == (digits_run / "model.int8.onnx").stat().st_size
    )
    names = [t["name"] for t in figures["targets"]]
    assert names[1].startswith("best ONNX (") and names[1].endswith(") b1 p50 / eager")
    best = min(
        (e for e in figures["engines"] if " " not in e and e != "pytorch-eager"),
        key=lambda e: figures["engines"][e]["batch1-p50-us"],
    )
    assert names[1] == f"best ONNX ({best}) b1 p50 / eager"
    assert names[:1] + names[2:] == [
        "ORT fp32 batch-1 p50 / eager",
        "int8 file / fp32 file",
        "int8 top-1 drop (points)",
        "parity max |diff|",
    ]
    printed = capsys.readouterr().out
    assert "b1 p50 µs" in printed
    # Where the bytes go: each part as size_breakdown measures it, and the
    # int8 floor is the int8 file's initializers and fedge metadata.
    parts = figures["size-breakdown"]["parts"]
    int8 = onnx.load(str(digits_run / "model.int8.onnx"))
    assert parts["onnx-int8"] == size_breakdown(int8)
    assert (
        parts["onnx-int8"]["total"] == (digits_run / "model.int8.onnx").stat().st_size
    )
    floor = sum(
        v
        for k, v in parts["onnx-int8"].items()
        if k.startswith("initializers ") or k == "metadata fedge"
    )
    assert figures["size-breakdown"]["int8-floor-bytes"] == floor
    assert f"int8 floor (initializers + fedge metadata, no graph): {floor} bytes" in (
        printed
    )


@pytest.mark.parametrize("module", [cli_bench_edge, cli_verify, cli_export])
def test_commands_on_a_missing_folder_fail_cleanly(module, tmp_path):
    from fedge.shared.errors import FedgeError

    name = {cli_bench_edge: "bench-edge", cli_verify: "verify", cli_export: "export"}[
        module
    ]
    if module is cli_bench_edge:
        assert invoke(module, [name, str(tmp_path / "absent")]) == 2
    else:
        with pytest.raises(FedgeError):  # the dispatcher prints it and exits 2
            invoke(module, [name, str(tmp_path / "absent")])
