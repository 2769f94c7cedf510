"""docs/subscribers.md is what subscriber teams read: its table of the helper's settings must be the
helper's own arguments and defaults (its links are checked with every page's, in test_docs_links.py)."""
import inspect
import re
from pathlib import Path

from bridge.consumer import AgentEventConsumer

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "subscribers.md"


def test_settings_table_lists_the_helper_s_arguments_with_their_defaults():
    text = PAGE.read_text()
    table = text[text.index("| argument | default |"):text.index("What it guarantees")]
    documented = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", table, re.M))
    parameters = inspect.signature(AgentEventConsumer.__init__).parameters
    tuned = {name: p.default for name, p in parameters.items()
             if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("group_id", "warmup_timeout_s")}
    assert set(documented) == set(tuned)
    assert all(float(documented[name]) == float(default) for name, default in tuned.items())
