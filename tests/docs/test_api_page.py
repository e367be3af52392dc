"""Every public name of ``import fedge`` has its entry on the API page."""

from pathlib import Path

import fedge

PAGE = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_every_public_name_is_documented():
    page = PAGE.read_text(encoding="utf-8")
    public = [name for name in fedge.__all__ if not name.startswith("__")]

    missing = [name for name in public if f"::: fedge.{name}\n" not in page]

    assert public
    assert missing == [], "add '::: fedge.NAME' for each to docs/api.md"
