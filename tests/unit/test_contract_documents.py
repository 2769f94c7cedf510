"""The contracts in docs/contracts: valid documents (checked by real validators), examples that
match their own schemas, and the facts they state agreeing with the code."""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
from contract_docs import CONTRACTS, MODES, ROOT, AsyncApi, OpenApi, errors, load
from openapi_spec_validator import validate as validate_openapi
from openapi_spec_validator.readers import read_from_filename

from bridge import protocol
from bridge.auth import GUID_PATTERN
from bridge.config import TOKEN_PATTERN, Settings
from bridge.protocol import Push
from bridge.records import Router, build_records

VALIDATOR = ROOT / "tests" / "asyncapi-validator"


def run_asyncapi_parser(path: Path) -> subprocess.CompletedProcess:
    if shutil.which("node") is None:
        pytest.fail("Node.js is needed to validate the AsyncAPI document (see README: Needs)")
    if not (VALIDATOR / "node_modules" / "@asyncapi" / "parser").is_dir():
        pytest.fail(f"the AsyncAPI parser is not installed: run `make test` (npm ci in {VALIDATOR.relative_to(ROOT)})")
    return subprocess.run(["node", str(VALIDATOR / "validate.mjs"), str(path)], capture_output=True, text=True,
                          timeout=120)


def copy_contracts(tmp_path: Path) -> Path:
    folder = tmp_path / "contracts"
    shutil.copytree(CONTRACTS, folder)
    return folder


def test_asyncapi_document_passes_the_official_parser():
    result = run_asyncapi_parser(CONTRACTS / "asyncapi.yaml")
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "AsyncAPI 3.0.0, 3 channels, 2 messages" in result.stdout


def test_the_asyncapi_parser_rejects_a_broken_document(tmp_path):
    """Control: the validation above can fail, in the document and in the schema it references."""
    folder = copy_contracts(tmp_path)
    text = (folder / "asyncapi.yaml").read_text()
    (folder / "asyncapi.yaml").write_text(text.replace("additionalProperties: false", "additionalProperties: nope", 1))
    schema = (folder / "event.schema.json").read_text()
    (folder / "event.schema.json").write_text(schema.replace('"minLength": 1', '"minLength": "one"'))
    result = run_asyncapi_parser(folder / "asyncapi.yaml")
    assert result.returncode == 1
    assert "additionalProperties" in result.stdout and "minLength" in result.stdout, result.stdout


@pytest.mark.parametrize("name", ["openapi.yaml", "openapi-management.yaml"])
def test_openapi_documents_are_valid_openapi_3_1(name):
    spec, base_uri = read_from_filename(str(CONTRACTS / name))
    assert spec["openapi"] == "3.1.0"
    validate_openapi(spec, base_uri=base_uri)


@pytest.mark.parametrize("name, old, new, named", [
    ("openapi.yaml", "in: header", "in: headers", "headers"),
    ("openapi-management.yaml", "required: true", "required: maybe", "maybe"),
    ("openapi-management.yaml", "type: integer", "type: whole", "whole"),
])
def test_the_openapi_validator_rejects_a_broken_document(tmp_path, name, old, new, named):
    """Control: the validation above can fail, for each document."""
    path = copy_contracts(tmp_path) / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    spec, base_uri = read_from_filename(str(path))
    with pytest.raises(Exception, match=named):
        validate_openapi(spec, base_uri=base_uri)


def test_event_schema_is_a_valid_json_schema_and_its_examples_match_it():
    schema = load(CONTRACTS / "event.schema.json")
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    assert schema["examples"] and all(errors(validator, example) == [] for example in schema["examples"])
    # What it must allow and refuse (the liberal/strict split of the push contract).
    assert errors(validator, {"eventType": "X", "workNo": 1, "content": [1, "a"], "future": {"x": None}}) == []
    assert errors(validator, {"eventType": "X", "content": "1456403549-15"}) == []
    assert errors(validator, {"eventType": ""}) and errors(validator, {"content": None})
    assert errors(validator, {"eventType": "X", "workNo": True})
    # eventGenTime in a record is always an integer in range: the bridge normalises or quarantines the rest.
    assert errors(validator, {"eventType": "X", "eventGenTime": protocol.MAX_EVENT_TIME}) == []
    for sent in ("1763900000002", -1, protocol.MAX_EVENT_TIME + 1, None, 1.5):
        assert errors(validator, {"eventType": "X", "eventGenTime": sent}), sent


def test_every_asyncapi_message_example_matches_its_message():
    contract = AsyncApi()
    checked = 0
    for channel in contract.doc["channels"]:
        for message in contract.messages(channel):
            assert message.examples, f"{message.name} has no example"
            for example in message.examples:
                assert errors(message.headers, example["headers"]) == [], example["name"]
                assert errors(message.payload, example["payload"]) == [], example["name"]
                checked += 1
    assert checked >= 4


def test_every_openapi_example_matches_its_schema():
    contract = OpenApi()
    operation = contract.doc["paths"][contract.push_path]["post"]
    body = operation["requestBody"]["content"]["application/json"]
    validator = contract.schema_validator(body["schema"])
    assert body["examples"] and all(errors(validator, e["value"]) == [] for e in body["examples"].values())
    assert errors(validator, {"workNo": "1", "eventList": []}), "an empty eventList is not a valid push"
    event = contract.schema_validator({"$ref": "#/components/schemas/PushedEvent"}, strict_types=True)
    for sent in (1763900000002, "1763900000002", "", None, 1763900000002.0, "0" * 14):
        assert errors(event, {"eventType": "X", "eventGenTime": sent}) == [], sent
    for sent in (-1, "0" * 15, " 1", "1\n", "1.0", 1.5, True, {}, protocol.MAX_EVENT_TIME + 1):
        assert errors(event, {"eventType": "X", "eventGenTime": sent}), sent
    for work_no in ("7", 7, "", None):
        assert errors(event, {"eventType": "X", "workNo": work_no}) == [], work_no
    for work_no in (" ", "\n", 7.0, True, [], 2**64):
        assert errors(event, {"eventType": "X", "workNo": work_no}), work_no
    for answer in contract.answers(router=True):
        response = contract.response(answer.where, answer.status)
        media = response["content"]["application/json"]
        value = media["examples"][answer.example]["value"]
        assert errors(contract.schema_validator(media["schema"]), value) == [], answer
    guid = contract.resolve({"$ref": "#/components/parameters/Guid"})
    assert re.fullmatch(guid["schema"]["pattern"], guid["example"])


def test_every_management_example_matches_its_schema():
    contract = OpenApi.management()
    checked = 0
    for where, responses in contract.operations().items():
        for status in responses:
            for media in (contract.response(where, int(status)).get("content") or {}).values():
                for name, example in media["examples"].items():
                    assert errors(contract.schema_validator(media["schema"]), example["value"]) == [], (where, name)
                    checked += 1
    assert checked >= 10


def test_every_documented_answer_names_its_modes_and_every_retcode_is_the_codes():
    contract = OpenApi()
    answers = contract.answers()
    assert all(answer.modes and set(answer.modes) <= set(MODES) for answer in contract.answers(router=True))
    codes = {value for name, value in vars(protocol).items() if re.fullmatch(r"\d{3}-\d{3}", str(value))}
    failure = contract.resolve({"$ref": "#/components/schemas/Failure"})
    assert set(failure["properties"]["retcode"]["enum"]) == codes
    assert {a.retcode for a in answers if a.status != 200} == codes
    # refuse mode answers malformed pushes with 400/413/415; quarantine mode answers them "0".
    assert contract.pairs("refuse") - contract.pairs("quarantine") == {(400, "000-006"), (413, "000-006"),
                                                                       (415, "000-006")}
    assert contract.pairs("quarantine") < contract.pairs("refuse")
    # The router's own answers: its codes are the bridge's, malformed input 000-006 and "retry
    # later" 100-007, whose 503 tells when, as the bridge's does.
    router = [a for a in contract.answers(router=True) if a.where == "router"]
    assert {a.status for a in router} == {500, 501, 502, 503, 504}
    assert {a.retcode for a in router} == {protocol.BAD_MESSAGE, protocol.UNAVAILABLE}
    assert contract.response("router", 503)["headers"]["Retry-After"]["required"] is True


def test_the_documents_state_the_code_s_patterns_and_defaults():
    openapi, asyncapi = OpenApi(), AsyncApi()
    guid = openapi.resolve({"$ref": "#/components/parameters/Guid"})["schema"]["pattern"]
    samples = ["279fe21d-1b2c-4d3e-9f00-aabbccddeeff", "279FE21D-1b2c-4d3e-9f00-aabbccddeeff.Node_1-a",
               "279fe21d-1b2c-4d3e-9f00-aabbccddeeff.", "279fe21d-1b2c-4d3e-9f00-aabbccddeeff.a/b", "x",
               "279fe21d-1b2c-4d3e-9f00-aabbccddeeff." + "n" * 65]
    assert [bool(re.fullmatch(guid, s)) for s in samples] == [bool(GUID_PATTERN.fullmatch(s)) for s in samples]
    scheme = openapi.doc["components"]["securitySchemes"]["serviceToken"]
    assert scheme["name"] == "service_token"
    assert TOKEN_PATTERN.pattern == "[A-Za-z0-9_-]{1,50}" and "1-50 characters of `A-Z a-z 0-9 - _`" in scheme["description"]
    push = openapi.resolve({"$ref": "#/components/schemas/Push"})
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    assert push["properties"]["eventList"]["maxItems"] == defaults["max_events_per_push"]
    channels = {ch["address"] for ch in asyncapi.doc["channels"].values()}
    assert {defaults["topic"], defaults["dead_letter_topic"]} <= channels
    assert openapi.push_path == defaults["push_path"]
    # the limits of a well-formed event, as the code has them
    event = load(CONTRACTS / "event.schema.json")
    assert event["properties"]["eventGenTime"]["maximum"] == protocol.MAX_EVENT_TIME
    assert f"at most {protocol.MAX_EVENT_DEPTH} levels" in event["description"]
    pushed = openapi.resolve({"$ref": "#/components/schemas/PushedEvent"})
    assert f"more than {protocol.MAX_EVENT_DEPTH} levels" in pushed["description"]
    assert {"maximum": protocol.MAX_EVENT_TIME, "minimum": 0, "type": "integer"} in \
        pushed["properties"]["eventGenTime"]["anyOf"]
    management = OpenApi.management()
    assert management.doc["servers"][0]["url"].endswith(f":{defaults['management_port']}")


def test_records_built_by_the_bridge_match_the_asyncapi_message():
    """The pure record builder against the contract (the integration tests do it through Kafka)."""
    contract = AsyncApi()
    events = [{"eventType": "AgentState_Ready", "workNo": 42, "content": None},
              {"eventType": "AgentState_Ready", "workNo": 42, "content": None},
              {"eventType": "AgentEvent_Call_Release", "content": "1456403549-15", "extra": [1.5]}]
    push = Push("42", events, ["42", "42", "42"], [0, 1, 2], 3, [])
    for node in ("AgentGateway1", ""):
        for record in build_records(push, node, Router("cc.agent.events", ())):
            message = contract.message_for(record.topic)
            assert message.violations(record.key, record.headers, record.value) == {}
