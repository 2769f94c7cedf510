"""The drainer's pure parts: the spool entry codec and the waves that keep each agent in order."""
from __future__ import annotations

from bridge.delivery import SPOOLED_HEADER, decode, encode, waves
from bridge.records import Record


def record(key: bytes | None, value: bytes = b"{}") -> Record:
    return Record("t", key, value, [("ce_id", b"x"), ("ce_time", b"2026-01-01T00:00:00.000Z")])


def test_records_round_trip_through_the_codec_with_the_spooled_header():
    records = [Record("cc.agent.events", b"1001", b'{"eventType":"A","content":"\\u00e9"}',
                      [("ce_id", b"abc"), ("ce_pushindex", b"0")]),
               Record("cc.agent.deadletter", None, b"\xff\xfe not json", [("bridge_status", b"400")])]
    back = decode(encode(records))
    assert [(r.topic, r.key, r.value) for r in back] == [(r.topic, r.key, r.value) for r in records]
    assert [r.headers for r in back] == [[*r.headers, SPOOLED_HEADER] for r in records]


def test_an_agents_entries_go_in_successive_waves_others_share_them():
    entries = [[record(b"A")], [record(b"B")], [record(b"A")], [record(None)], [record(b"C"), record(b"A")],
               [record(b"B")]]
    assert waves(entries) == [[0, 1, 3], [2, 5], [4]]


def test_waves_never_put_two_entries_of_one_agent_together_and_keep_their_order():
    entries = [[record(bytes([key]))] for key in b"ABABBBCAC"]
    result = waves(entries)
    for wave in result:
        keys = [entries[i][0].key for i in wave]
        assert len(keys) == len(set(keys))
    position = {i: n for n, wave in enumerate(result) for i in wave}
    for key in (b"A", b"B", b"C"):
        mine = [i for i, e in enumerate(entries) if e[0].key == key]
        assert [position[i] for i in mine] == sorted(position[i] for i in mine)
        assert len({position[i] for i in mine}) == len(mine)
