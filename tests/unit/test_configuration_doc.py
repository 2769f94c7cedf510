"""docs/configuration.md is what operators read: its table must list every setting, and only
settings (an unknown BRIDGE_* variable stops the process)."""
import dataclasses
import re
from pathlib import Path

from bridge.config import PREFIX, Settings

PAGE = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()


def table() -> str:
    """The configuration table: from its header row to the first line that is not a row."""
    start = PAGE.index("| variable | default | meaning |")
    rows = []
    for line in PAGE[start:].splitlines():
        if not line.startswith("|"):
            break
        rows.append(line)
    return "\n".join(rows)


def test_configuration_table_lists_every_setting_and_nothing_else():
    rows = set(re.findall(rf"^\| `{PREFIX}([A-Z_]+)`(?:, `{PREFIX}([A-Z_]+)`)?", table(), re.M))
    documented = {name for row in rows for name in row if name}
    assert documented == {f.name.upper() for f in dataclasses.fields(Settings)}


def test_no_setting_is_listed_twice():
    names = re.findall(rf"`{PREFIX}([A-Z_]+)`", "\n".join(line.split(" | ")[0] for line in table().splitlines()))
    assert len(names) == len(set(names))
