"""A griffe extension: Sphinx cross-reference roles in docstrings become code.

fedge's numpy-style docstrings name other objects as Sphinx does
(``:func:`simulate```, ``:class:`~fedge.shared.config.RunConfig```);
mkdocstrings renders Markdown, where such a role would show as typed. Each
becomes inline code of the name (its last part after ``~``, as Sphinx shows it).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(
    r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const|ref):`(?P<name>[^`]+)`"
)


def role_as_code(match: re.Match[str]) -> str:
    """Return a role's target as inline code, shortened after ``~`` as Sphinx does."""
    name = match["name"]
    if name.startswith("~"):
        name = name[1:].rsplit(".", 1)[-1]
    return f"`{name}`"


def plain_roles(text: str) -> str:
    """Return ``text`` with every Sphinx role replaced by inline code."""
    return ROLE.sub(role_as_code, text)


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring as soon as griffe creates the object."""
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(obj.docstring.value)
