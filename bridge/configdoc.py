"""docs/configuration.md's table of settings, built from the declarations in bridge/settings.py.

    python -m bridge.configdoc                                   # print the table
    python -m bridge.configdoc --update docs/configuration.md    # write it into the page

A test fails while the page and the declarations differ.
"""
from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from .settings import PREFIX, Declaration, Settings, choices_of, optional_of

TABLE_HEADER = "| variable | default | meaning |"


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _shown(value: object) -> str:
    if value is MISSING:
        return "(required)"
    if value is None or value == ():
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{_number(value)}`" if isinstance(value, float) else f"`{value}`"


def _listed(choices: tuple[str, ...]) -> str:
    quoted = [f"`{c}`" for c in choices]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}" if len(quoted) > 1 else "".join(quoted)


def table() -> str:
    """docs/configuration.md's table of settings: one row per setting, in declaration order."""
    hints = typing.get_type_hints(Settings)
    rows = [TABLE_HEADER, "|----------|---------|---------|"]
    for f in fields(Settings):
        d: Declaration = f.metadata["setting"]
        default = (d.shown or "{default}").replace("{default}", _shown(f.default))
        meaning = d.doc.replace("{choices}", _listed(choices_of(optional_of(hints[f.name]))))
        if d.within is not None:
            meaning += f"; from `{_number(d.within[0])}` to `{_number(d.within[1])}`"
        rows.append(f"| `{PREFIX}{f.name.upper()}` | {default} | {meaning} |")
    return "\n".join(rows)


def with_table(page: str) -> str:
    """`page` with its table of settings (from TABLE_HEADER to the first line that is not a row)
    replaced by table()."""
    start = page.find(TABLE_HEADER)
    if start < 0:
        raise ValueError(f"no table of settings (a line {TABLE_HEADER!r}) in the page")
    lines = page[start:].split("\n")
    end = next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))
    return page[:start] + "\n".join([table(), *lines[end:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.configdoc", description="Print the table of "
                                     "settings that docs/configuration.md shows, built from the declarations.")
    parser.add_argument("--update", metavar="FILE", type=Path, help="write the table into FILE, in place of its own")
    args = parser.parse_args(argv)
    if args.update is None:
        print(table())
    else:
        args.update.write_text(with_table(args.update.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
