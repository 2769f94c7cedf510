"""docs/layout.md walks a push through the bridge naming every module: one that is added, moved or
renamed without the page following fails here."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_module_of_the_bridge_is_named_in_the_layout_page() -> None:
    page = (ROOT / "docs" / "layout.md").read_text()
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "bridge").rglob("*.py"))
    named = {m for m in modules if m in page or (f"`{Path(m).name}`" in page and Path(m).parent.name in page)}
    missing = [m for m in modules if m not in named]
    assert not missing, f"docs/layout.md does not name {missing}"


def test_the_layout_page_names_no_module_that_is_gone() -> None:
    page = (ROOT / "docs" / "layout.md").read_text()
    named = {word.strip("`.,:;()") for word in page.split() if word.strip("`.,:;()").startswith("bridge/")
             and word.strip("`.,:;()").endswith(".py")}
    gone = sorted(n for n in named if not (ROOT / n).is_file())
    assert not gone, f"docs/layout.md names modules that do not exist: {gone}"
