"""The drainer's pure parts: the spool entry codec and the waves that keep each agent in order."""
from __future__ import annotations

from bridge.drainer import SPOOLED_HEADER, decode, encode, waves
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


class StandInPublisher:
    """Kafka as the drainer sees it: ready, taking every batch (what Kafka then does is the
    integration tests' business)."""

    ready, problem = True, ""

    def __init__(self) -> None:
        self.published: list[bytes] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish_batch(self, records: list[Record], timeout: float | None = None) -> None:
        self.published += [r.value for r in records]


async def test_a_disk_error_while_draining_is_counted_and_tried_again(tmp_path, monkeypatch):
    import asyncio

    from bridge import drainer as drainer_module
    from bridge.delivery import Delivery
    from bridge.metrics import Metrics
    from bridge.spool import OwnSlot

    monkeypatch.setattr(drainer_module, "DRAIN_RETRY_S", 0.05)
    spool = OwnSlot.open(tmp_path, 1 << 24)
    await spool.join()  # takes pushes
    for n in range(3):
        await spool.append(encode([record(b"A", f'{{"n":{n}}}'.encode())]))
    real_read, failures = spool.read, []

    async def read_failing_once(limit: int = 1 << 20) -> list:
        if not failures:
            failures.append(1)
            raise OSError(5, "Input/output error")
        return await real_read(limit)

    monkeypatch.setattr(spool, "read", read_failing_once)
    publisher, metrics = StandInPublisher(), Metrics()
    delivery = Delivery(publisher, spool, metrics)
    await delivery.start()
    for _ in range(100):
        if spool.entries == 0:
            break
        await asyncio.sleep(0.02)
    await delivery.stop()
    assert publisher.published == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert metrics.registry.get_sample_value("bridge_drain_errors_total") == 1
