"""docs/architecture.md's room table is true to the code's imports."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "architecture.md"
ROW = re.compile(r"^\| `(?P<room>[a-z_]+)/` \|.*\| (?P<allowed>[^|]*) \|$")


def room_table():
    """{room: set of rooms it may import}, from the page's table."""
    rooms = {}
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        if match := ROW.match(line):
            rooms[match["room"]] = set(re.findall(r"`([a-z_]+)`", match["allowed"]))
    return rooms


def room_files(room):
    if room == "fedge":  # the API's own modules; the rest of fedge/ are the links
        return sorted(p for p in (ROOT / "fedge").glob("*.py"))
    return sorted((ROOT / room).rglob("*.py"))


def imported_rooms(path):
    """The fedge rooms a module imports (at the top, in a function, for types)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "fedge" and len(parts) > 1:
                found.add(parts[1] if (ROOT / parts[1]).is_dir() else "fedge")
    return found


def test_the_table_names_every_room_fedge_installs():
    linked = {p.name for p in (ROOT / "fedge").iterdir() if p.is_symlink()}

    assert set(room_table()) == linked | {"fedge"}


def test_every_room_imports_only_the_rooms_the_table_allows():
    table = room_table()
    offenders = []
    for room, allowed in table.items():
        for path in room_files(room):
            for other in imported_rooms(path) - allowed - {room}:
                offenders.append(f"{path.relative_to(ROOT)} imports fedge.{other}")

    assert offenders == []


def test_nothing_imports_the_cli():
    assert all("cli" not in allowed for allowed in room_table().values())
