"""The run-config reference page, generated from where the keys are defined.

Every default and its comment live once, in ``pyproject.toml`` under
``[tool.flwr.app.config]``; :mod:`fedge.shared.config` types them. This MkDocs
hook turns both into ``config.md`` at build time, so the reference cannot
drift from either: a key without a type, or a typed key without a default,
stops the build.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, get_type_hints

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

from fedge.shared.config import AUTO_KEYS, RunConfig
from fedge.shared.config_keys import SECTION_KEYS

PAGE = "config.md"
TABLE = "[tool.flwr.app.config]"
GROUP = re.compile(r"^# --- (?P<name>\w.*)$")  # "# --- data" starts a group


def key_types() -> dict[str, str]:
    """Return each run-config key's type, read from the ``RunConfig`` dataclasses.

    ``"int"``, ``"float"``, ``"str"``, ``"bool"``; ``'int or "auto"'`` for the
    keys :mod:`fedge.shared.dp_defaults` may choose.
    """
    section_classes = get_type_hints(RunConfig)
    types: dict[str, str] = {}
    for section, field_map in SECTION_KEYS.items():
        hints = get_type_hints(section_classes[section])
        for key, attr in field_map.items():
            name = getattr(hints[attr], "__name__", str(hints[attr]))
            if key in AUTO_KEYS:
                name = f'{str(hints[attr]).removesuffix(" | None")} or "auto"'
            types[key] = name
    return types


def _split_comment(line: str) -> tuple[dict[str, Any], str]:
    """Split ``key = value  # comment`` into its TOML pair and its comment."""
    for pos in [i for i, ch in enumerate(line) if ch == "#"] + [len(line)]:
        try:
            pair = tomllib.loads(line[:pos])
        except tomllib.TOMLDecodeError:
            continue  # that '#' is inside the value (a string)
        return pair, line[pos + 1 :].strip()
    raise ValueError(f"{TABLE}: cannot read the line {line!r} as `key = value`")


def _cell(text: str) -> str:
    """Return ``text`` made safe for one Markdown table cell (pipes, tags)."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _table_lines(pyproject: Path) -> list[str]:
    lines = pyproject.read_text(encoding="utf-8").splitlines()
    if TABLE not in lines:
        raise ValueError(f"{pyproject} has no {TABLE} table")
    body = lines[lines.index(TABLE) + 1 :]
    end = next((i for i, s in enumerate(body) if s.startswith("[")), len(body))
    body = body[:end]
    # Comments right before the next table head that table (a section rule).
    while body and (not body[-1].strip() or body[-1].lstrip().startswith("#")):
        body.pop()
    return body


def config_reference_markdown(pyproject: Path) -> str:
    """Return the reference page: one table row per key, in the file's order.

    Parameters
    ----------
    pyproject : Path
        The project's ``pyproject.toml``.

    Returns
    -------
    str
        Markdown: the table's comment paragraphs and, per ``# --- group``, a
        table of key, type (with the typed field), default and comment.

    Raises
    ------
    ValueError
        A key ``fedge.shared.config`` does not type, or a typed key the table
        gives no default, naming each.
    """
    types = key_types()
    out = [
        "# Run-config reference",
        "",
        f"Every key of a run, its type and default. Generated from `pyproject.toml`'s "
        f"`{TABLE}` (the one place each default and its reason are written) and the "
        "typed fields of [`RunConfig`][fedge.shared.config.RunConfig]; set a key "
        "with `fedge simulate --set KEY=VALUE`, in a scenario file or with "
        "`flwr run --run-config`.",
        "",
    ]
    seen: list[str] = []
    in_table = False
    for raw in _table_lines(pyproject):
        line = raw.strip()
        if not line or (line.startswith("#") and not seen):
            continue  # the table's own note to its editors, before any key
        if group := GROUP.match(line):
            out += ["", f"## {group['name'].strip().capitalize()}", ""]
            in_table = False
        elif line.startswith("#"):
            if in_table:
                out.append("")
                in_table = False
            out.append(_cell(line.removeprefix("#").strip()))
        else:
            pair, comment = _split_comment(line)
            ((key, value),) = pair.items()
            if key not in types:
                raise ValueError(
                    f"{TABLE} key {key!r} has no typed field in fedge.shared.config "
                    "(add it to a section of config_keys.SECTION_KEYS)"
                )
            if not in_table:
                out += [
                    "",
                    "| key | type | default | what it does |",
                    "|---|---|---|---|",
                ]
                in_table = True
            shown = _toml_value(value)
            out.append(
                f"| `{key}` | {types[key]} | `{_cell(shown)}` | {_cell(comment)} |"
            )
            seen.append(key)
    missing = [k for k in types if k not in seen]
    if missing:
        raise ValueError(f"{TABLE} gives no default for the typed keys {missing}")
    return "\n".join(out) + "\n"


def _toml_value(value: Any) -> str:
    """Return the default as TOML writes it (``"auto"``, ``false``, ``0.5``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def on_files(files: Files, *, config: MkDocsConfig) -> Files:
    """MkDocs hook: add the generated ``config.md`` to the site's files."""
    pyproject = Path(config.config_file_path).parent / "pyproject.toml"
    files.append(
        File.generated(config, PAGE, content=config_reference_markdown(pyproject))
    )
    return files
