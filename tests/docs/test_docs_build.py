"""`make docs` fails on a reference that no longer resolves (CI runs it)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What mkdocs.yml reads: its pages, the hook's pyproject, the included READMEs.
SITE_SOURCES = (
    "mkdocs.yml",
    "pyproject.toml",
    "docs",
    "deploy/README.md",
    "edge_export/README.md",
)


def copy_site_sources(tmp_path):
    for name in SITE_SOURCES:
        source, target = ROOT / name, tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy(source, target)
    return tmp_path


def build(folder):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(folder / "site")],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_a_broken_api_reference_fails_the_strict_build(tmp_path):
    folder = copy_site_sources(tmp_path)
    with (folder / "docs" / "api.md").open("a", encoding="utf-8") as f:
        f.write("\n::: fedge.shared.config.NoSuchThing\n")

    result = build(folder)

    assert result.returncode != 0
    assert "NoSuchThing" in result.stderr
