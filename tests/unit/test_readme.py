"""The README's configuration table is what operators read: it must list every setting, and only
settings (an unknown BRIDGE_* variable stops the process)."""
import dataclasses
import re
from pathlib import Path

from bridge.config import PREFIX, Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_configuration_table_lists_every_setting_and_nothing_else():
    table = README[README.index("## Configuration"):README.index("## Deploying")]
    rows = set(re.findall(rf"^\| `{PREFIX}([A-Z_]+)`(?:, `{PREFIX}([A-Z_]+)`)?", table, re.M))
    documented = {name for row in rows for name in row if name}
    assert documented == {f.name.upper() for f in dataclasses.fields(Settings)}
