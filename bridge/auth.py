"""Who may push: the Guid header's format and the service_token. Pure decisions, no I/O.

The Guid is a session credential issued by the gateway (it rotates about every 60 s in the
gateway's dynamic mode), so the bridge checks its shape only and never stores or logs it whole.
Its suffix after the dot names the gateway node, which is kept as the event source.
The service_token is the shared secret the third party set at agent sign-in; several may be
valid at once so they can be rotated without downtime, and the set can be replaced while serving
(a token file read again: bridge/watch.py).
"""
from __future__ import annotations

import hmac
import re

from .config import TOKEN_PATTERN
from .protocol import BAD_GUID, BAD_TOKEN_FORMAT, NOT_PERMITTED, Refusal

GUID_PATTERN = re.compile(
    r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
    r"(?:\.([A-Za-z0-9_-]{1,64}))?"
)


def mask_guid(guid: str | None) -> str:
    """Enough of a Guid to correlate log lines, not enough to reuse it."""
    if not guid:
        return "-"
    head, dot, node = guid.partition(".")
    return f"{head[:4]}****{dot}{node[:64]}"


class Authenticator:
    def __init__(self, tokens: tuple[str, ...], allow_no_token: bool) -> None:
        self._tokens = tuple(t.encode() for t in tokens)
        self._open = allow_no_token and not tokens

    def use(self, tokens: tuple[str, ...]) -> str:
        """Accept exactly `tokens` from now on (a token file read again). The set is replaced in one
        assignment: a check sees the old set or the new one, never a mix, and a push already past
        its check goes on. Returns what changed, in counts (never a token)."""
        if not tokens:
            raise ValueError("an empty set of tokens would lock every gateway out")
        new = tuple(dict.fromkeys(t.encode() for t in tokens))
        added, removed = len(set(new) - set(self._tokens)), len(set(self._tokens) - set(new))
        self._tokens = new
        changed = f" ({added} added, {removed} removed)" if added or removed else ""
        return f"{len(new)} token{'s' if len(new) > 1 else ''} accepted{changed}"

    def check(self, guid: str | None, token: str | None) -> str:
        """Return the gateway node named by the Guid ("" if none); raise Refusal otherwise."""
        if guid is None or not guid.strip():
            raise Refusal(401, BAD_GUID, "Guid header is missing", "guid")
        match = GUID_PATTERN.fullmatch(guid.strip())
        if match is None:
            raise Refusal(401, BAD_GUID, "Guid header is not a UUID optionally followed by '.' and a node name",
                          "guid")
        if token is not None and not TOKEN_PATTERN.fullmatch(token):
            raise Refusal(400, BAD_TOKEN_FORMAT,
                          "service_token header must be 1-50 characters of A-Z, a-z, 0-9, '-' or '_'", "token_format")
        if not self._open:
            if token is None:
                raise Refusal(403, NOT_PERMITTED, "service_token header is missing", "token")
            if not self._known(token.encode()):
                raise Refusal(403, NOT_PERMITTED, "service_token is not accepted", "token")
        return match.group(1) or ""

    def _known(self, candidate: bytes) -> bool:
        # Compare against every configured token, without stopping early, in constant time each.
        found = False
        for token in self._tokens:
            found |= hmac.compare_digest(candidate, token)
        return found
