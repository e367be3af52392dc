"""What a node's error reply says, in one line, and what a round of them means.

A node whose ClientApp raises replies with an error instead of an update.
Flower puts the exception in ``Error.reason`` as ``<class 'T'>:<'text'>``; on
the simulation engine the text is Ray's whole wrapped traceback, with the
actor's pid and id, so two nodes failing alike never have equal reasons. These
pure functions reduce a reason to the exception line a person would quote
(``ModuleNotFoundError: No module named 'x'``), so that a round in which every
sampled node failed the same way is reported once, with the likely cause.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

# Flower's reason format, on deployed nodes and on the simulation engine alike.
_FLOWER_REASON = re.compile(r"^<class '(?P<type>[^']+)'>:<'(?P<text>.*)'>$", re.DOTALL)
# A Python exception line: a (dotted) exception name, a colon, a message.
_EXCEPTION_LINE = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*(?P<name>[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt))"
    r": (?P<message>\S.*)$"
)
# Exceptions that only carry another one (Ray's and Flower's wrappers): the
# wrapped exception's own line is the one to quote.
_WRAPPERS = frozenset(
    {"RayTaskError", "RaySystemError", "RayActorError", "ClientAppException"}
)
# `import pkg.mod` found a module `pkg` that is a plain file, not the package.
_SHADOWED_PACKAGE = re.compile(
    r"No module named '(?P<package>[\w.]+?)\.[\w.]+'; '(?P=package)' is not a package"
)
_MISSING_MODULE = re.compile(r"No module named '(?P<module>[\w.]+)'$")


def describe_error(reason: str) -> str:
    """Return the one line that says what went wrong in an error reply's ``reason``.

    Parameters
    ----------
    reason : str
        ``Error.reason`` of a reply: Flower's ``<class 'T'>:<'text'>``, or any text.

    Returns
    -------
    str
        The innermost exception line the text quotes (``T: message``), outside
        Ray's and Flower's wrappers; else ``T: text`` of a one-line reason, else
        the last non-empty line. Never more than one line.
    """
    match = _FLOWER_REASON.match(reason.strip())
    type_name, text = (
        (match["type"].rsplit(".", 1)[-1], match["text"])
        if match
        else ("", reason.strip())
    )
    quoted = [
        f"{m['name']}: {m['message'].strip()}"
        for line in text.splitlines()
        if (m := _EXCEPTION_LINE.match(line.strip())) and m["name"] not in _WRAPPERS
    ]
    if quoted:
        return quoted[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type_name or "unknown error"
    if len(lines) == 1 and type_name and not type_name.startswith("Ray"):
        return f"{type_name}: {lines[0]}"
    return lines[-1]


def likely_cause(error: str) -> str | None:
    """Return the likely cause of an error line from :func:`describe_error`, or None."""
    shadowed = _SHADOWED_PACKAGE.search(error)
    if shadowed:
        package = shadowed["package"]
        return (
            f"a module named '{package}' that is not a package, such as a file "
            f"{package}.py in the folder the run or node was started from, hides "
            f"the app's '{package}' package; rename that file or start from "
            "another folder"
        )
    missing = _MISSING_MODULE.search(error)
    if missing:
        return (
            f"'{missing['module']}' cannot be imported where the nodes run; "
            "install the app's dependencies there"
        )
    return None


def with_likely_cause(error: str) -> str:
    """Return ``error``, followed by its likely cause when one is known."""
    cause = likely_cause(error)
    return error if cause is None else f"{error} (likely cause: {cause})"


def common_failure(sampled: int, errors: Iterable[str]) -> str | None:
    """Say, in one line, that every sampled node failed alike; None otherwise.

    Parameters
    ----------
    sampled : int
        Nodes sent the round's instruction.
    errors : iterable of str
        :func:`describe_error` of each error reply of the round.

    Returns
    -------
    str or None
        ``"all N sampled nodes failed with the same error: E (likely cause: C)"``
        when there was one error reply per sampled node and all say the same;
        None when a node answered, did not reply, or failed differently.
    """
    counts = Counter(errors)
    if sampled < 1 or len(counts) != 1 or sum(counts.values()) != sampled:
        return None
    (error,) = counts
    nodes = "the 1 sampled node" if sampled == 1 else f"all {sampled} sampled nodes"
    return f"{nodes} failed with the same error: {with_likely_cause(error)}"


def count_errors(errors: Iterable[str]) -> dict[str, int]:
    """Return each distinct error and how many replies said it, most frequent first."""
    return dict(Counter(errors).most_common())
