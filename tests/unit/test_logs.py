"""Log lines: the Kafka client's repeated messages are held back and counted, the bridge's are not."""
from __future__ import annotations

import logging

from bridge.logs import JsonFormatter, Repeats


def record(name: str, msg: str, created: float, *args) -> logging.LogRecord:
    entry = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)
    entry.created = created
    return entry


def test_a_repeated_client_message_passes_once_per_window_with_the_count():
    repeats = Repeats(window_s=60)
    passed = [r for t in range(300) if repeats.filter(r := record("aiokafka.conn", "Unable connect to %s", t * 0.25,
                                                                   f"node-{t % 3}"))]
    assert [r.created for r in passed] == [0.0, 60.0]
    assert passed[1].fields == {"repeated": 239, "repeated_within_s": 60}
    assert '"repeated":239' in JsonFormatter().format(passed[1])


def test_other_messages_and_the_bridges_own_lines_are_not_held_back():
    repeats = Repeats(window_s=60)
    assert repeats.filter(record("aiokafka.client", "Unable to update metadata from %s", 0.0))
    assert repeats.filter(record("aiokafka.conn", "another template", 0.1))
    assert all(repeats.filter(record("bridge.push", "pushEvent refused", t)) for t in range(100))


def test_a_line_budget_passes_the_first_lines_then_counts_what_it_held_back():
    from bridge.logs import LineBudget

    budget = LineBudget(burst=3, interval_s=10.0)
    taken = [budget.take("token", now=t * 0.01) for t in range(100)]
    assert taken[:3] == [0, 0, 0] and taken[3:] == [None] * 97
    assert budget.take("guid", now=1.0) == 0  # each key has its own budget
    assert budget.take("token", now=10.0) == 97  # the next window starts by saying what was held back
    assert budget.take("token", now=10.1) == 0


def test_what_a_budget_held_back_is_summed_up_once_its_interval_is_over():
    from bridge.logs import LineBudget

    budget = LineBudget(burst=2, interval_s=10.0)
    assert budget.due_in(now=0.0) is None, "nothing held back, nothing due"
    taken = [budget.take("token", now=t) for t in (0.0, 1.0, 2.0, 3.0)]
    assert taken == [0, 0, None, None]
    assert budget.due_in(now=3.0) == 7.0
    assert budget.overdue(now=9.9) == [], "not before the interval is over"
    assert budget.overdue(now=10.0) == [("token", 2)]
    assert budget.overdue(now=11.0) == [] and budget.due_in(now=11.0) is None, "summed up once"
    assert budget.take("token", now=12.0) == 0, "the next line does not report them again"


def test_the_direct_line_is_the_line_the_logger_would_write(monkeypatch):
    import io

    import orjson

    from bridge import logs

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    handler = logs.BatchedStderr(interval_s=60)
    handler.setFormatter(logs.JsonFormatter())
    handler.stream = io.StringIO()
    root.handlers.append(handler)
    logger = logging.getLogger("bridge.test-direct")
    monkeypatch.setattr(logger, "level", logging.INFO)
    fields = {"operation": "pushEvent", "workNo": "1001", "events": 5, "status": 200}
    logs.direct_line(logger, "pushEvent accepted")(logging.INFO, fields)
    logger.info("pushEvent accepted", extra={"fields": fields})
    logs.direct_line(logger, "pushEvent accepted")(logging.DEBUG, fields)  # below the logger's level: nothing
    direct, logged = (orjson.loads(line) for line in handler.stream.getvalue().splitlines())
    assert direct.pop("time")[:19] == logged.pop("time")[:19] and direct == logged


def test_without_the_bridges_handler_the_direct_line_goes_through_the_logger(caplog):
    from bridge import logs

    logger = logging.getLogger("bridge.test-direct-fallback")
    with caplog.at_level(logging.INFO, logger=logger.name):
        logs.direct_line(logger, "pushEvent accepted")(logging.INFO, {"workNo": "1001"})
    assert [(r.getMessage(), r.fields) for r in caplog.records] == [("pushEvent accepted", {"workNo": "1001"})]
