"""The run folder's names are spelled once: in shared/run_folder.py.

Greps the package sources (string constants in the syntax tree, docstrings
excluded) for every run-folder file name, the model format tag and every
metric column name, and fails when one is spelled in more than one module.
"""

import ast
from pathlib import Path

import pytest

from fedge.edge_export import runtime
from fedge.shared import run_folder

REPO = Path(__file__).resolve().parents[2]
PACKAGES = (
    "server",
    "client",
    "shared",
    "edge_export",
    "simulations",
    "benchmarks",
    "cli",
)
# The edge_export/runtime/ folder is copied alone to devices and cannot import
# shared; test_runtime_spells_the_names_it_needs_as_the_contract_does checks it agrees.
STANDALONE = "edge_export/runtime/"
# The same spelling with another meaning, where renaming would break files on disk.
SAME_SPELLING_OTHER_MEANING = {
    # the privacy ledger's field holding the run's id (run-folder file: the id itself)
    ("client/privacy_ledger.py", run_folder.RUN_ID_FILE),
    # the run's id in Flower's `flwr ls --format json` output
    ("benchmarks/deployment_round.py", run_folder.RUN_ID_FILE),
}


def contract_names() -> set[str]:
    files = {
        value
        for name, value in vars(run_folder).items()
        if name.endswith(("_FILE", "_DIR")) and isinstance(value, str)
    }
    return files | {run_folder.MODEL_FORMAT} | set(run_folder.METRIC_COLUMNS)


def string_constants(source: str) -> set[str]:
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(
            node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
        )
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    }


def package_modules() -> dict[str, set[str]]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if not rel.startswith(STANDALONE):
                modules[rel] = string_constants(path.read_text(encoding="utf-8"))
    return modules


def test_the_grep_sees_the_packages_and_the_contract():
    modules = package_modules()

    assert "shared/run_folder.py" in modules
    assert "server/federation.py" in modules
    assert {"metrics.csv", "fedge-model/1", "epsilon-max"} <= contract_names()
    assert "metrics.csv" in modules["shared/run_folder.py"]
    assert "edge_export/runtime/metadata.py" not in modules


def test_string_constants_skip_docstrings_but_see_literals():
    source = '"""Writes metrics.csv."""\ndef f():\n    """metrics.csv"""\n    return "model.json"\n'

    assert string_constants(source) == {"model.json"}


def test_each_run_folder_name_is_spelled_in_one_module():
    modules = package_modules()
    spelled_twice = {}
    for name in sorted(contract_names()):
        spelling = [
            module
            for module, constants in modules.items()
            if name in constants and (module, name) not in SAME_SPELLING_OTHER_MEANING
        ]
        if len(spelling) > 1:
            spelled_twice[name] = spelling

    assert spelled_twice == {}, (
        "use the constant from shared/run_folder.py instead of spelling these again: "
        f"{spelled_twice}"
    )


@pytest.mark.parametrize(
    ("runtime_name", "contract_name"),
    [
        ("MANIFEST_FILE", "MANIFEST_FILE"),
        ("SIGNATURE_FILE", "SIGNATURE_FILE"),
        ("PRIVACY_EPSILON_MAX", "EPSILON_MAX"),
        ("LEGACY_PRIVACY_EPSILON_MAX", "LEGACY_EPSILON_MAX"),
    ],
)
def test_runtime_spells_the_names_it_needs_as_the_contract_does(
    runtime_name, contract_name
):
    assert getattr(runtime, runtime_name) == getattr(run_folder, contract_name)


def test_each_exported_file_is_listed_once_with_its_own_role():
    names = [f.name for f in run_folder.EXPORTED_FILES]
    roles = [f.role for f in run_folder.EXPORTED_FILES]

    assert len(set(names)) == len(names)
    assert len(set(roles)) == len(roles)
    assert set(names) <= contract_names()
    # Every artefact that must match model.onnx is a model a device runs, and
    # the benchmark times every embedded model under its own engine name.
    for f in run_folder.EXPORTED_FILES:
        assert not f.same_function_as_onnx or f.device_model, f.name
        assert (f.engine is not None) == (f.embedded and f.device_model), f.name
