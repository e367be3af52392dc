"""The API pages show Sphinx roles in docstrings as code, not as typed."""

import importlib.util
import sys
from pathlib import Path

import pytest

HOOK = Path(__file__).resolve().parents[2] / "docs" / "hooks" / "sphinx_roles.py"


def load_extension():
    spec = importlib.util.spec_from_file_location("sphinx_roles_hook", HOOK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (":func:`simulate` runs", "`simulate` runs"),
        ("its :class:`~fedge.shared.config.RunConfig`.", "its `RunConfig`."),
        ("see :mod:`fedge.shared.dp_defaults`", "see `fedge.shared.dp_defaults`"),
        (":py:meth:`Run.compare` and :attr:`x`", "`Run.compare` and `x`"),
        ("``plain code`` stays", "``plain code`` stays"),
    ],
)
def test_a_role_becomes_inline_code_of_its_name(text, shown):
    assert load_extension().plain_roles(text) == shown
