"""The machine-readable contracts in docs/contracts, loaded for the tests.

- `AsyncApi`: per channel, the message a record must match: key, headers and value validators
  built from the AsyncAPI document and the event JSON Schema it references.
- `OpenApi`: the documented answers of the push endpoint, per mode of BRIDGE_MALFORMED_PUSHES
  (from each example's `x-modes`), and a validator for an observed answer.

Schemas are validated with jsonschema, their $refs resolved inside the documents (and across to
event.schema.json) through one registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7, DRAFT202012

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ROOT / "docs" / "contracts"
MODES = ("quarantine", "refuse")
FORMATS = jsonschema.FormatChecker()


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too


def registry(folder: Path) -> Registry:
    """Every document of `folder` under its file URI: the event schema in its own dialect, the
    AsyncAPI document as draft 7 (its default schema format), the OpenAPI one as 2020-12."""
    dialect = {"asyncapi.yaml": DRAFT7, "openapi.yaml": DRAFT202012}
    resources = []
    for path in sorted(folder.iterdir()):
        if path.suffix in (".yaml", ".json"):
            contents = load(path)
            resource = (Resource(contents, dialect[path.name]) if path.name in dialect
                        else Resource.from_contents(contents))
            resources.append((path.resolve().as_uri(), resource))
    return Registry().with_resources(resources)


def errors(validator: jsonschema.protocols.Validator, instance: Any) -> list[str]:
    """Every violation, as `where: what` lines (empty when the instance matches)."""
    found = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in found]


@dataclass
class Message:
    """One AsyncAPI message: what a record's key, headers and value must match."""

    name: str
    content_type: str
    key: jsonschema.protocols.Validator
    headers: jsonschema.protocols.Validator
    payload: jsonschema.protocols.Validator
    examples: list[dict]
    header_names: set[str]

    def violations(self, key: bytes | None, headers: list[tuple[str, bytes]], value: bytes) -> dict[str, list[str]]:
        """Problems per part ("key", "headers", "value", "headers/<name>"); empty when it matches."""
        found: dict[str, list[str]] = {}
        text_headers = {}
        for name, raw in headers:
            if name in text_headers:
                found.setdefault("headers", []).append(f"{name}: repeated")
            try:
                text_headers[name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                found.setdefault(f"headers/{name}", []).append("not UTF-8")
        for problem in errors(self.headers, text_headers):
            name = problem.split(":")[0]
            found.setdefault(f"headers/{name}" if name in self.header_names else "headers",
                             []).append(problem)
        try:
            key_text = None if key is None else key.decode("utf-8")
        except UnicodeDecodeError:
            found.setdefault("key", []).append("not UTF-8")
        else:
            found.setdefault("key", []).extend(errors(self.key, key_text))
        if self.content_type == "application/json":
            try:
                payload = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                found.setdefault("value", []).append(f"not JSON: {exc}")
                payload = None
            else:
                found.setdefault("value", []).extend(errors(self.payload, payload))
        else:
            found.setdefault("value", []).extend(errors(self.payload, value.decode("utf-8", "replace")))
        return {part: problems for part, problems in found.items() if problems}


class AsyncApi:
    def __init__(self, folder: Path = CONTRACTS) -> None:
        self.path = (folder / "asyncapi.yaml").resolve()
        self.doc = load(self.path)
        self.registry = registry(folder)

    def validator(self, pointer: str, schema: dict | None = None) -> jsonschema.protocols.Validator:
        """A draft-7 validator for the schema at `pointer` (a JSON pointer into this document)."""
        return jsonschema.Draft7Validator({"$ref": f"{self.path.as_uri()}#{pointer}"},
                                          registry=self.registry, format_checker=FORMATS)

    def resolve(self, pointer: str) -> Any:
        return self.registry.resolver(self.path.as_uri()).lookup(f"#{pointer}").contents

    def channel_for(self, topic: str) -> str:
        """The channel a topic belongs to: the one with that address, else the templated one."""
        channels = self.doc["channels"]
        exact = [name for name, ch in channels.items() if ch["address"] == topic]
        templated = [name for name, ch in channels.items() if "{" in ch["address"]]
        return (exact or templated)[0]

    def messages(self, channel: str) -> list[Message]:
        out = []
        for name, ref in self.doc["channels"][channel]["messages"].items():
            pointer = ref["$ref"].removeprefix("#")
            message = self.resolve(pointer)
            key_pointer = f"{pointer}/bindings/kafka/key"
            headers = self.resolve(f"{pointer}/headers")
            headers = self.registry.resolver(self.path.as_uri()).lookup(headers["$ref"]).contents \
                if "$ref" in headers else headers
            out.append(Message(name, message.get("contentType", self.doc["defaultContentType"]),
                               self.validator(key_pointer), self.validator(f"{pointer}/headers"),
                               self.validator(f"{pointer}/payload"), message.get("examples", []),
                               set(headers.get("properties", {}))))
        return out

    def message(self, channel: str) -> Message:
        (message,) = self.messages(channel)
        return message

    def message_for(self, topic: str) -> Message:
        """The message of the channel of `topic` as the bridge names topics by default."""
        return self.message(self.channel_for(topic))


@dataclass(frozen=True)
class Answer:
    """A documented answer: where it comes from, its status, retcode and the modes it exists in."""

    where: str  # "POST /path", "GET /path", or "other paths"
    status: int
    retcode: str
    modes: tuple[str, ...]
    example: str


class OpenApi:
    def __init__(self, folder: Path = CONTRACTS) -> None:
        self.path = (folder / "openapi.yaml").resolve()
        self.doc = load(self.path)
        self.registry = registry(folder)

    @cached_property
    def push_path(self) -> str:
        (path,) = self.doc["paths"]
        return path

    def resolve(self, node: Any) -> Any:
        while isinstance(node, dict) and "$ref" in node:
            node = self.registry.resolver(self.path.as_uri()).lookup(node["$ref"]).contents
        return node

    def operations(self) -> dict[str, dict]:
        """`METHOD path` (and "other paths") -> the responses documented there."""
        out = {}
        for path, item in self.doc["paths"].items():
            for method, operation in item.items():
                if method in ("get", "put", "post", "delete", "patch", "head", "options", "trace"):
                    out[f"{method.upper()} {path}"] = operation["responses"]
        out["other paths"] = self.doc["x-other-paths"]["responses"]
        return out

    def answers(self) -> list[Answer]:
        found = []
        for where, responses in self.operations().items():
            for status, response in responses.items():
                response = self.resolve(response)
                for name, example in response["content"]["application/json"]["examples"].items():
                    found.append(Answer(where, int(status), example["value"]["retcode"], tuple(example["x-modes"]),
                                        name))
        return found

    def pairs(self, mode: str) -> set[tuple[int, str]]:
        """The (status, retcode) pairs the document says a bridge in `mode` can answer."""
        return {(a.status, a.retcode) for a in self.answers() if mode in a.modes}

    def response(self, where: str, status: int) -> dict | None:
        return self.resolve(self.operations().get(where, {}).get(str(status)))

    def absolute(self, node: Any) -> Any:
        """`node` with every relative $ref made absolute (so it can be validated on its own)."""
        if isinstance(node, dict):
            return {k: (f"{self.path.as_uri()}{v}" if v.startswith("#") else self.path.parent.joinpath(v).resolve()
                        .as_uri()) if k == "$ref" and isinstance(v, str) and "://" not in v else self.absolute(v)
                    for k, v in node.items()}
        if isinstance(node, list):
            return [self.absolute(v) for v in node]
        return node

    def schema_validator(self, schema: dict) -> jsonschema.protocols.Validator:
        """A 2020-12 validator for a schema object of this document ($refs resolved in it)."""
        return jsonschema.Draft202012Validator(self.absolute(schema), registry=self.registry, format_checker=FORMATS)

    def answer_problems(self, where: str, status: int, headers: dict[str, str], body: bytes) -> list[str]:
        """Why an observed answer does not match the document (empty when it does)."""
        response = self.response(where, status)
        if response is None:
            return [f"{where}: status {status} is not documented"]
        problems = []
        media = response["content"]["application/json"]
        if headers.get("content-type") != "application/json; charset=UTF-8":
            problems.append(f"content-type {headers.get('content-type')!r}")
        try:
            problems += errors(self.schema_validator(media["schema"]), orjson.loads(body))
        except orjson.JSONDecodeError:
            problems.append(f"body is not JSON: {body[:80]!r}")
        for name, spec in response.get("headers", {}).items():
            value = headers.get(name.lower())
            if value is None:
                if spec.get("required"):
                    problems.append(f"header {name} missing")
                continue
            problems += [f"header {name}: {p}" for p in errors(self.schema_validator(spec["schema"]), value)]
        return problems


def malformed_pushes_env(mode: str) -> dict[str, str]:
    """The setting that puts a bridge in `mode` (quarantine or refuse)."""
    return {"BRIDGE_MALFORMED_PUSHES": mode}
