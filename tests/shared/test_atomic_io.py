import json
import os

import pytest

from fedge.shared import atomic_io
from fedge.shared.atomic_io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)


def test_write_creates_parents_and_replaces_content(tmp_path):
    target = tmp_path / "a" / "b" / "file.bin"

    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")

    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["file.bin"]


def test_text_is_utf8(tmp_path):
    target = tmp_path / "t.txt"

    atomic_write_text(target, "ε = 1.5")

    assert target.read_bytes() == "ε = 1.5".encode()


def test_json_round_trips_sorted_with_trailing_newline(tmp_path):
    target = tmp_path / "p.json"

    atomic_write_json(target, {"b": 1, "a": [1.5, "x"], "path": tmp_path})

    text = target.read_text()
    assert json.loads(text) == {"a": [1.5, "x"], "b": 1, "path": str(tmp_path)}
    assert text.endswith("}\n")
    assert text.index('"a"') < text.index('"b"')


def test_failing_replace_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "model.json"
    target.write_text("old")

    def refuse(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(atomic_io.os, "replace", refuse)

    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(target, "new")

    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["model.json"]


def test_failure_mid_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")

    def broken_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(atomic_io.os, "fsync", broken_fsync)

    with pytest.raises(OSError, match="I/O error"):
        atomic_write_bytes(target, b"new" * 1000)

    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.pt"]


def test_interrupt_mid_write_cleans_up_too(tmp_path, monkeypatch):
    target = tmp_path / "status.json"
    target.write_text("old")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic_io.os, "fsync", interrupted)

    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(target, {"state": "complete"})

    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["status.json"]


def test_payload_failing_to_serialise_keeps_old_file(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")

    class Unprintable:
        def __str__(self):
            raise RuntimeError("cannot render")

    with pytest.raises(RuntimeError, match="cannot render"):
        atomic_write_json(target, {"ok": 1, "bad": Unprintable()})

    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["config.json"]
