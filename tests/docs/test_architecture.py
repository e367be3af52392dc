"""docs/architecture.md's room table is true to the code's imports."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "architecture.md"
ROW = re.compile(r"^\| `(?P<room>[a-z_]+)/` \|.*\| (?P<allowed>[^|]*) \|$")
# The device runtime: a folder a device copies alone, so it imports nothing of
# fedge, and its encoder is the one training uses; a room may import it alone,
# as `edge_export/runtime`, without importing the rest of edge_export.
DEVICE_RUNTIME = "edge_export/runtime"


def room_table():
    """{room: set of rooms it may import}, from the page's table."""
    rooms = {}
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        if match := ROW.match(line):
            rooms[match["room"]] = set(re.findall(r"`([a-z_/]+)`", match["allowed"]))
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
            if "/".join(parts[1:3]) == DEVICE_RUNTIME:
                found.add(DEVICE_RUNTIME)
            elif parts[0] == "fedge" and len(parts) > 1:
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
                # A room that may import edge_export may import its runtime too.
                if other.split("/")[0] not in allowed | {room}:
                    offenders.append(f"{path.relative_to(ROOT)} imports fedge.{other}")

    assert offenders == [], "an import against the room table of docs/architecture.md"


def test_the_device_runtime_imports_nothing_of_fedge():
    imports = {
        path.relative_to(ROOT).as_posix(): imported_rooms(path)
        for path in sorted((ROOT / DEVICE_RUNTIME).rglob("*.py"))
    }

    outside = [
        path.name
        for path in (ROOT / DEVICE_RUNTIME).rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.level > 1  # from ..x: outside
    ]

    assert "edge_export/runtime/encoding.py" in imports
    assert all(rooms == set() for rooms in imports.values()), imports
    assert outside == []


def test_nothing_imports_the_cli():
    assert all("cli" not in allowed for allowed in room_table().values())


def room_rows():
    """{room: the row's text}, from the page's table."""
    return {
        match["room"]: line
        for line in PAGE.read_text(encoding="utf-8").splitlines()
        if (match := ROW.match(line))
    }


def test_every_module_a_room_row_names_is_in_that_room():
    missing = [
        f"{room}/{name}"
        for room, row in room_rows().items()
        for name in re.findall(r"`([a-z_]+\.py)`", row)
        if not (ROOT / room / name).is_file()
    ]

    assert missing == [], "docs/architecture.md names modules that are gone"


def test_every_module_of_a_room_is_named_in_its_row():
    unnamed = [
        f"{room}/{path.name}"
        for room, row in room_rows().items()
        for path in room_files(room)
        if path.parent == ROOT / room
        and path.name != "__init__.py"
        and f"`{path.name}`" not in row
    ]

    assert unnamed == [], "say what each does in its room's row of docs/architecture.md"
