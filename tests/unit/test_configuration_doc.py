"""docs/configuration.md is what operators read: its table is built from the declarations in
bridge/settings.py (`python -m bridge.configdoc --update docs/configuration.md`), so it lists every
setting, only settings, and what the code does with them."""
import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest

from bridge import configdoc
from bridge.settings import PREFIX, Settings

PATH = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
PAGE = PATH.read_text()


def rows(text: str) -> list[str]:
    """The table's rows: from the header row to the first line that is not a row, header excluded."""
    start = text.index(configdoc.TABLE_HEADER)
    found = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        found.append(line)
    return found


def test_the_page_shows_the_table_built_from_the_declarations():
    assert configdoc.with_table(PAGE) == PAGE, "docs/configuration.md differs from the declarations in " \
        "bridge/settings.py: run python -m bridge.configdoc --update docs/configuration.md"


def test_regenerating_a_page_replaces_its_table_and_keeps_the_prose():
    """Control for the test above: a page whose table is stale or incomplete is not left as it is."""
    stale = PAGE.replace("| `8043` |", "| `8044` |")
    incomplete = "\n".join(line for line in PAGE.splitlines() if "`BRIDGE_SPOOL_DIR`" not in line)
    assert stale != PAGE and configdoc.with_table(stale) == PAGE
    assert incomplete != PAGE.rstrip("\n") and configdoc.with_table(incomplete) == PAGE.rstrip("\n")
    with pytest.raises(ValueError, match="no table of settings"):
        configdoc.with_table("# Configuration\n\nNo table here.\n")


def test_one_row_per_setting_in_declaration_order():
    names = [re.match(rf"\| `{PREFIX}([A-Z0-9_]+)` \|", row).group(1) for row in rows(configdoc.table())]
    assert names == [f.name.upper() for f in dataclasses.fields(Settings)]


def test_every_choice_of_a_choice_setting_is_named_in_its_row():
    table = dict(zip((f.name for f in dataclasses.fields(Settings)), rows(configdoc.table()), strict=True))
    with_choices = set()
    for name, hint in typing.get_type_hints(Settings).items():
        members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        for literal in (m for m in members if typing.get_origin(m) is typing.Literal):
            with_choices.add(name)
            for choice in typing.get_args(literal):
                assert f"`{choice}`" in table[name], f"{name}: the choice {choice!r} is not documented"
    assert with_choices == {"kafka_security_protocol", "kafka_sasl_mechanism", "malformed_pushes", "log_level",
                            "push_log_level"}


def test_the_table_shows_declared_defaults_and_ranges():
    table = "\n".join(rows(configdoc.table()))
    assert "| `BRIDGE_PORT` | `8043` | " in table and "from `1` to `65535` |" in table
    assert "| `BRIDGE_SHUTDOWN_TIMEOUT_S` | `20` | " in table
    assert "| `BRIDGE_PUBLISH_TIMEOUT_S` | `5`; `2` with a spool | " in table
    assert "| `BRIDGE_KAFKA_BOOTSTRAP_SERVERS` | (required) | " in table
    assert "| `BRIDGE_ROUTES` | none | " in table and "| `BRIDGE_INSECURE_HTTP` | `false` | " in table
