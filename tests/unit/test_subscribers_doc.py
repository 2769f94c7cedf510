"""docs/subscribers.md is what subscriber teams read: its links must lead somewhere and its table of
the helper's settings must be the helper's own arguments and defaults."""
import inspect
import re
from pathlib import Path

from bridge.consumer import AgentEventConsumer

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "subscribers.md"


def test_every_relative_link_of_the_page_and_of_the_readme_exists():
    for page in (PAGE, ROOT / "README.md"):
        links = re.findall(r"\]\(([^)#:]+)\)", page.read_text())
        assert links, page
        missing = [link for link in links if not (page.parent / link).exists()]
        assert missing == [], page.name
    assert "docs/subscribers.md" in (ROOT / "README.md").read_text()


def test_settings_table_lists_the_helper_s_arguments_with_their_defaults():
    text = PAGE.read_text()
    table = text[text.index("| argument | default |"):text.index("What it guarantees")]
    documented = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", table, re.M))
    parameters = inspect.signature(AgentEventConsumer.__init__).parameters
    tuned = {name: p.default for name, p in parameters.items()
             if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("group_id", "warmup_timeout_s")}
    assert set(documented) == set(tuned)
    assert all(float(documented[name]) == float(default) for name, default in tuned.items())
