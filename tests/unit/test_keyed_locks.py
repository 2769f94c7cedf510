import asyncio

from bridge.locks import KeyedLocks


async def test_same_key_is_serialised_and_locks_are_dropped_after_use():
    locks, order = KeyedLocks(), []

    async def push(name: str, keys: list[bytes]) -> None:
        async with locks.hold(keys):
            order.append(f"{name}:start")
            await asyncio.sleep(0.01)
            order.append(f"{name}:end")

    await asyncio.gather(push("a", [b"1"]), push("b", [b"1"]), push("c", [b"2", b"1"]))
    assert order == ["a:start", "a:end", "b:start", "b:end", "c:start", "c:end"]
    assert len(locks) == 0


async def test_different_keys_run_concurrently():
    locks, order = KeyedLocks(), []

    async def push(name: str, key: bytes) -> None:
        async with locks.hold([key]):
            order.append(f"{name}:start")
            await asyncio.sleep(0.01)
            order.append(f"{name}:end")

    await asyncio.gather(push("a", b"1"), push("b", b"2"))
    assert order[:2] == ["a:start", "b:start"]


async def test_opposite_key_orders_do_not_deadlock():
    locks = KeyedLocks()

    async def push(keys):
        async with locks.hold(keys):
            await asyncio.sleep(0.001)

    await asyncio.wait_for(asyncio.gather(*(push([b"x", b"y"] if i % 2 else [b"y", b"x"]) for i in range(50))), 5)
    assert len(locks) == 0


async def test_lock_released_when_the_holder_is_cancelled():
    locks = KeyedLocks()

    async def holder():
        async with locks.hold([b"k"]):
            await asyncio.sleep(10)

    task = asyncio.create_task(holder())
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.wait_for(_acquire(locks), 1)
    assert len(locks) == 0


async def _acquire(locks):
    async with locks.hold([b"k"]):
        pass


def test_partition_per_push_matches_the_default_partitioner():
    """The publisher picks partitions itself (once per key); it must agree with Kafka's default."""
    from types import SimpleNamespace

    from aiokafka.partitioner import DefaultPartitioner

    from bridge.records import Record
    from bridge.writes import partitions_of

    for count in (1, 6, 12, 50):
        cluster = SimpleNamespace(partitions_for_topic=lambda topic, n=count: set(range(n)))
        producer = SimpleNamespace(client=SimpleNamespace(cluster=cluster))
        keys = [str(n).encode() for n in range(0, 5000, 7)] + [b"10086", "座席".encode()]
        records = [Record("t", key, b"{}", []) for key in keys]
        chosen = partitions_of(producer, records)
        expected = [DefaultPartitioner()(key, list(range(count)), list(range(count))) for key in keys]
        assert chosen == expected
    unknown = SimpleNamespace(client=SimpleNamespace(cluster=SimpleNamespace(partitions_for_topic=lambda t: None)))
    assert partitions_of(unknown, [Record("t", b"1", b"{}", [])]) == [None]
