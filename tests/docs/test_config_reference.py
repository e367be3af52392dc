"""The run-config reference page is generated from pyproject.toml and config.py."""

import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest

from fedge.shared.config import default_run_config
from fedge.shared.config_keys import CONFIG_KEYS

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"


def load_hook():
    path = ROOT / "docs" / "hooks" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("config_reference_hook", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def table_rows(markdown):
    """{key: [type, default, comment]} from the page's table rows."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_every_default_key_is_a_row_with_its_default_and_type():
    rows = table_rows(load_hook().config_reference_markdown(PYPROJECT))

    defaults = default_run_config()
    assert set(defaults) <= set(rows)
    assert set(CONFIG_KEYS) <= set(rows)
    assert rows["dp-mode"][1] == '`"none"`'
    assert rows["num-server-rounds"][1] == "`5`"
    assert rows["fix-model"][1] == "`false`"
    assert rows["target-epsilon"][0] == "float"
    assert rows["batch-size"][0] == 'int or "auto"'


def test_a_comment_with_pipes_stays_in_its_cell():
    rows = table_rows(load_hook().config_reference_markdown(PYPROJECT))

    assert len(rows["dp-mode"]) == 3
    assert rows["dp-mode"][2].startswith("none \\| sample (DP-SGD on each client)")


def test_the_group_headings_and_the_auto_note_come_from_the_comments():
    page = load_hook().config_reference_markdown(PYPROJECT)

    assert "## Differential privacy" in page
    assert "tooling" not in page  # the rule that heads the next table
    assert "`fedge privacy --suggest` prints its choice." in page


def write_pyproject(tmp_path, edit):
    text = edit(PYPROJECT.read_text(encoding="utf-8"))
    path = tmp_path / "pyproject.toml"
    path.write_text(text, encoding="utf-8")
    tomllib.loads(text)  # still valid TOML
    return path


def test_a_key_config_py_does_not_type_stops_the_build(tmp_path):
    path = write_pyproject(
        tmp_path,
        lambda t: t.replace("momentum = 0.9\n", "momentum = 0.9\nnesterov = true\n"),
    )

    with pytest.raises(ValueError, match="key 'nesterov' has no typed field"):
        load_hook().config_reference_markdown(path)


def test_a_typed_key_without_a_default_stops_the_build(tmp_path):
    path = write_pyproject(tmp_path, lambda t: t.replace("momentum = 0.9\n", ""))

    with pytest.raises(
        ValueError, match=r"no default for the typed keys \['momentum'\]"
    ):
        load_hook().config_reference_markdown(path)
