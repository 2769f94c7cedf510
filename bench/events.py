"""Push bodies for the benchmark: what a CC-Gateway sends for busy agents.

Each agent lives through the same cycle of events a call centre produces (phone alerting,
ringing, talking, recording, release, after-call work, ready, ...), with the content shapes the
vendor documents and `eventGenTime` stamps. A push carries the next few events of one agent's
cycle, so every body file mixes event types and content sizes the same way, whatever the number
of events per push. One body per line: line i is agent i's push, so a file of N lines is N
distinct agents (distinct `workNo` values).
"""
from __future__ import annotations

from pathlib import Path

import orjson

FIRST_WORK_NO = 20000
EPOCH_MS = 1_763_900_000_000


def agent_cycle(work_no: str, call: int, at_ms: int) -> list[dict]:
    """One call of one agent, oldest event first (ten events)."""
    caller = f"138{(int(work_no) * 7919 + call) % 100_000_000:08d}"
    callid = f"{1_456_403_549 + call}-{int(work_no) % 1000}"
    events = [
        ("AgentOther_PhoneAlerting", None),
        ("AgentEvent_Ringing", {"caller": caller, "transfer": "", "callid": callid, "transfrom": "",
                                "called": "95555", "type": "0", "mediaType": "5", "mediaAbility": "1",
                                "feature": "0"}),
        ("AgentEvent_Talking", {"caller": caller, "callid": callid, "called": "95555", "feature": "0",
                                "type": "0", "mediaAbility": "1"}),
        ("AgentMediaEvent_Record", {"taskId": 700_000 + call, "caller": caller, "called": "95555",
                                    "locationId": 1, "recordID": f"{callid}-rec", "callId": callid,
                                    "fileName": f"Y:/1/0/20251124/{work_no}/{callid}.V3",
                                    "fileMediaType": 2}),
        ("AgentEvent_Customer_Release", {"callid": callid, "number": caller}),
        ("AgentEvent_Call_Release", callid),
        ("AgentState_Work", None),
        ("AgentState_Ready", None),
        ("AgentEvent_Customer_Alerting", {"callid": callid, "otherPhoneWorkno": "", "otherPhone": caller,
                                          "type": "0"}),
        ("AgentState_SetNotReady_Success", {"reason": "200"}),
    ]
    return [{"eventType": kind, "workNo": work_no, "content": content, "eventGenTime": at_ms + 850 * i}
            for i, (kind, content) in enumerate(events)]


def push_body(agent: int, events_per_push: int) -> bytes:
    """The push of agent number `agent`: `events_per_push` consecutive events of its story,
    starting at a point of the cycle that depends on the agent (so event types are mixed)."""
    work_no = str(FIRST_WORK_NO + agent)
    offset = agent % 10
    story: list[dict] = []
    call = 0
    while len(story) < offset + events_per_push:
        story.extend(agent_cycle(work_no, call, EPOCH_MS + agent * 37 + call * 60_000))
        call += 1
    return orjson.dumps({"workNo": work_no, "eventList": story[offset:offset + events_per_push]})


def write_bodies(path: Path, agents: int, events_per_push: int) -> int:
    """Write one push per agent, one per line; return the mean body size in bytes."""
    total = 0
    with open(path, "wb") as out:
        for agent in range(agents):
            body = push_body(agent, events_per_push)
            total += len(body)
            out.write(body + b"\n")
    return total // agents
