"""The checker itself: it must fail when an acknowledged event is missing or an agent's events
are out of order, and must not fail for what a correct bridge produces (retries, duplicates)."""
from __future__ import annotations

import pytest

from bench.simulate import Ledger
from bench.verify import RESTORED, Seen, client_options, compare, parse_args


def ledger_of(*pushes: tuple[str, list[int]]) -> Ledger:
    ledger = Ledger()
    for agent, ids in pushes:
        ledger.add("ack", agent=agent, ids=ids, tries=1, latency=0.01)
    return ledger


def records(*events: tuple[str, int], topic: str = "t") -> list[Seen]:
    """Records in log order; an event's ce_id is derived from its identity, as the bridge's is."""
    return [Seen(topic, 0, offset, agent, f"{agent}:{gen}", gen) for offset, (agent, gen) in enumerate(events)]


def test_everything_present_in_order_passes():
    figures = compare(ledger_of(("1", [10, 11]), ("2", [5]), ("1", [12])),
                      records(("1", 10), ("2", 5), ("1", 11), ("1", 12)))
    assert figures.ok
    assert (figures.pushes_acked, figures.events_acked, figures.events_found) == (3, 4, 4)
    assert (figures.lost, figures.order_violations, figures.duplicates) == (0, 0, 0)


def test_an_acknowledged_event_missing_from_kafka_is_lost():
    figures = compare(ledger_of(("1", [10, 11, 12])), records(("1", 10), ("1", 12)))
    assert not figures.ok
    assert figures.lost == 1 and figures.lost_sample == [("1", 11)]


def test_an_event_acknowledged_but_never_sent_is_lost():
    ledger = ledger_of(("1", [10]))
    ledger.add("ack", agent="1", ids=[99], tries=1, latency=0.01)  # in the ledger, never pushed
    figures = compare(ledger, records(("1", 10)))
    assert figures.lost == 1 and not figures.ok


def test_reordered_events_of_one_agent_are_violations():
    figures = compare(ledger_of(("1", [10, 11])), records(("1", 11), ("1", 10)))
    assert figures.lost == 0 and figures.order_violations == 1 and not figures.ok


def test_retried_push_duplicates_are_dropped_before_checking_order():
    # A push answered 503 after its first event was written, then retried whole: 10 10 11.
    # A late write of an earlier attempt after later events is a duplicate too: 10 11 12 10.
    figures = compare(ledger_of(("1", [10, 11]), ("1", [12])),
                      records(("1", 10), ("1", 10), ("1", 11), ("1", 12), ("1", 10)))
    assert figures.ok and figures.duplicates == 2


def test_a_new_event_sharing_a_timestamp_is_a_violation():
    events = records(("1", 10), ("1", 11))
    events.append(Seen("t", 0, 2, "1", "different-id", 11))
    assert compare(ledger_of(("1", [10, 11])), events).order_violations == 1


def test_order_is_per_agent_and_per_topic():
    figures = compare(ledger_of(("1", [10]), ("2", [5]), ("1", [11])),
                      records(("1", 11), topic="b") + records(("2", 5), ("1", 10), topic="a"))
    assert figures.ok


def test_unacknowledged_and_foreign_records_are_counted_not_failed():
    figures = compare(ledger_of(("1", [10])),
                      [*records(("1", 10), ("1", 11)), Seen("t", 0, 9, None, None, None)])
    assert figures.ok and figures.unacked_found == 1 and figures.foreign == 1


def test_recovery_is_measured_from_the_restored_mark():
    ledger = Ledger()
    ledger.entries = [
        {"kind": "ack", "t": 100.0, "agent": "1", "ids": [1]},
        {"kind": "mark", "t": 101.0, "name": "fault"},
        {"kind": "fail", "t": 102.0, "agent": "1", "why": "timeout"},
        {"kind": "mark", "t": 110.0, "name": RESTORED},
        {"kind": "fail", "t": 111.0, "agent": "1", "why": "http503:100-007"},
        {"kind": "ack", "t": 112.5, "agent": "1", "ids": [2]},
        {"kind": "signout", "t": 113.0, "agent": "2"},
    ]
    figures = compare(ledger, records(("1", 1), ("1", 2)))
    assert figures.recovery_s == 2.5 and figures.last_failure_s == 1.0 and figures.signed_out == 1


def test_ledger_round_trips_through_its_file(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.add("ack", agent="7", ids=[1, 2], tries=2, latency=0.5)
    ledger.mark(RESTORED)
    ledger.close()
    loaded = Ledger.load(path)
    assert [e["kind"] for e in loaded.entries] == ["ack", "mark"]
    assert loaded.entries[0]["ids"] == [1, 2]


def test_what_the_agents_noticed_of_a_fault():
    ledger = Ledger()
    ledger.entries = [
        {"kind": "ack", "t": 100.0, "agent": "1", "ids": [1]},
        {"kind": "mark", "t": 101.0, "name": "fault"},
        {"kind": "ack", "t": 101.5, "agent": "2", "ids": [1]},
        {"kind": "fail", "t": 106.0, "agent": "1", "why": "http503:100-007"},
        {"kind": "fail", "t": 111.0, "agent": "1", "why": "timeout"},
        {"kind": "fail", "t": 107.0, "agent": "3", "why": "timeout"},
        {"kind": "ack", "t": 109.5, "agent": "2", "ids": [2]},                 # 8 s without any "0"
        {"kind": "ack", "t": 112.0, "agent": "1", "ids": [2], "failing_s": 11.0},
        {"kind": "signout", "t": 130.0, "agent": "3", "failing_s": 28.0},
        {"kind": "abandon", "t": 131.0, "agent": "4", "failing_s": 3.0},
    ]
    figures = compare(ledger, records(("1", 1), ("2", 1), ("2", 2), ("1", 2)))
    assert figures.agents_failed == 2
    assert figures.longest_failure_s == 28.0
    assert figures.longest_gap_s == 8.0
    assert figures.signed_out == 1


def test_no_fault_mark_no_gap_and_no_failures():
    figures = compare(ledger_of(("1", [10])), records(("1", 10)))
    assert (figures.agents_failed, figures.longest_failure_s, figures.longest_gap_s) == (0, 0.0, None)


def checker_args(*extra: str):
    return parse_args(["--ledger", "l.jsonl", "--topics", "t", *extra])


def test_the_checker_logs_in_with_sasl_from_a_password_file(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    options = client_options(checker_args("--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism",
                                          "SCRAM-SHA-256", "--sasl-username", "bridge", "--sasl-password-file",
                                          str(secret)))
    assert (options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "SCRAM-SHA-256", "bridge", "s3cret")
    assert "ssl_context" not in options


def test_the_checker_refuses_inconsistent_sasl_flags():
    for flags in (["--sasl-username", "bridge"],  # SSL by default: no SASL
                  ["--security-protocol", "SASL_SSL", "--sasl-mechanism", "PLAIN", "--sasl-username", "u"],
                  ["--security-protocol", "SASL_SSL", "--sasl-mechanism", "PLAIN", "--sasl-username", "u",
                   "--sasl-password", "p", "--sasl-password-file", "f"],
                  ["--security-protocol", "SASL_SSL", "--sasl-password", "p"]):
        with pytest.raises(SystemExit):
            client_options(checker_args(*flags))
