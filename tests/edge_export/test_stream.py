"""EdgeModel.stream and `fedge predict --window`: sliding windows over a recording."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pytest

from fedge.cli import predict as cli_predict
from fedge.edge_export.runtime import EdgeModel, InputError, read_recording

REPO = Path(__file__).resolve().parents[2]


def invoke(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fedge")
    cli_predict.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.run(args)


def recording(steps=430, seed=0):
    return np.random.default_rng(seed).normal(size=(6, steps))


def write_csv(path, rec, times):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["timestamp", *(f"acc{i}" for i in range(6))])
        for t, row in zip(times, rec.T, strict=True):
            writer.writerow([t, *(repr(float(v)) for v in row)])


@pytest.mark.slow
@pytest.mark.parametrize(("window", "stride"), [(100, 50), (80, 80), (120, 35)])
def test_stream_equals_predicting_each_window_alone(series_run, window, stride):
    model = EdgeModel.load(series_run / "model.onnx")
    rec = recording()

    got = model.stream(rec, window=window, stride=stride)

    starts = list(range(0, rec.shape[1] - window + 1, stride))
    assert got.starts.tolist() == starts
    for i, start in enumerate(starts):
        alone = model.predict(rec[None, :, start : start + window])
        assert got.prediction.labels[i] == alone.labels[0]
        np.testing.assert_allclose(
            got.prediction.probabilities[i], alone.probabilities[0], atol=1e-6
        )


@pytest.mark.slow
def test_stream_reads_a_timestamped_csv_and_defaults_to_the_models_length(
    series_run, tmp_path
):
    rec = recording(steps=250)
    times = [f"2026-01-01T00:00:{i / 10:04.1f}" for i in range(250)]
    write_csv(tmp_path / "rec.csv", rec, times)
    model = EdgeModel.load(series_run / "model.ort")

    got = model.stream(tmp_path / "rec.csv")

    assert got.starts.tolist() == [0, 100]  # window = stride = 100 steps
    assert got.timestamps.tolist() == [times[0], times[100]]
    expected = model.predict(np.stack([rec[:, :100], rec[:, 100:200]]))
    np.testing.assert_allclose(
        got.prediction.probabilities, expected.probabilities, atol=1e-6
    )


def test_read_recording_checks_its_input(tmp_path):
    np.savez(tmp_path / "r.npz", x=np.zeros((2, 3, 4)))
    with pytest.raises(
        InputError, match=r"a recording 'x' has shape \(channels, steps\)"
    ):
        read_recording(tmp_path / "r.npz")
    (tmp_path / "r.csv").write_text("time,a\n0,1.5\n1,oops\n")
    with pytest.raises(
        InputError,
        match=r"non-numeric value 'oops' in channel 'a' \(data row 2, 1-based",
    ):
        read_recording(tmp_path / "r.csv")
    (tmp_path / "r.txt").write_text("")
    with pytest.raises(InputError, match=r"unsupported recording file type '\.txt'"):
        read_recording(tmp_path / "r.txt")


@pytest.mark.slow
def test_stream_refuses_what_it_cannot_window(series_run, digits_run):
    model = EdgeModel.load(series_run / "model.onnx")
    with pytest.raises(InputError, match=r"has 50 steps, fewer than one window of 100"):
        model.stream(recording(steps=50))
    with pytest.raises(
        InputError,
        match=r"reads 6 channel\(s\); expected a recording of shape \(6, steps\), got \(3, 200\)",
    ):
        model.stream(np.zeros((3, 200)))
    with pytest.raises(InputError, match=r"window and stride must be >= 1 step"):
        model.stream(recording(), window=10, stride=0)
    digits = EdgeModel.load(digits_run / "model.onnx")
    with pytest.raises(InputError, match=r"takes image inputs, not time series"):
        digits.stream(np.zeros((1, 64)))


@pytest.mark.slow
def test_predict_window_writes_one_row_per_window_without_torch(
    series_run, tmp_path, predict_in_fresh_process
):
    rec = recording(steps=300)
    write_csv(tmp_path / "rec.csv", rec, [f"{i * 0.02:.2f}" for i in range(300)])

    imports_torch = predict_in_fresh_process(
        [
            "--window",
            "100",
            "--stride",
            "50",
            series_run / "model.ort",
            tmp_path / "rec.csv",
            "-o",
            tmp_path / "p.csv",
        ]
    )

    assert not imports_torch
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["start"] for r in rows] == ["0", "50", "100", "150", "200"]
    assert [r["timestamp"] for r in rows] == ["0.00", "1.00", "2.00", "3.00", "4.00"]
    expected = EdgeModel.load(series_run / "model.ort").predict(rec[None, :, 150:250])
    assert rows[3]["label"] == expected.labels[0]


def test_predict_stride_without_window_is_a_one_line_error(tmp_path, capsys):
    code = invoke(["predict", "--stride", "5", str(tmp_path), str(tmp_path / "x.csv")])

    assert code == 2
    assert (
        capsys.readouterr().err.strip()
        == "fedge predict: error: --stride needs --window"
    )
