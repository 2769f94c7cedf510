"""The machine-readable contracts in docs/contracts, loaded for the tests.

- `AsyncApi`: per channel, the message a record must match: key, headers and value validators
  built from the AsyncAPI document and the event JSON Schema it references.
- `OpenApi`: the documented answers of an OpenAPI document: the push endpoint's (openapi.yaml) per
  mode of BRIDGE_MALFORMED_PUSHES (from each example's `x-modes`), or the management port's
  (openapi-management.yaml), and a validator for an observed answer.

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
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
FORMATS = jsonschema.FormatChecker()


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too


def registry(folder: Path) -> Registry:
    """Every document of `folder` under its file URI: the event schema in its own dialect, the
    AsyncAPI document as draft 7 (its default schema format), the OpenAPI ones as 2020-12."""
    resources = []
    for path in sorted(folder.iterdir()):
        if path.suffix in (".yaml", ".json"):
            contents = load(path)
            resource = (Resource(contents, DRAFT7) if "asyncapi" in contents
                        else Resource(contents, DRAFT202012) if "openapi" in contents
                        else Resource.from_contents(contents))
            resources.append((path.resolve().as_uri(), resource))
    return Registry().with_resources(resources)


def strict(validator_class: Any) -> Any:
    """`validator_class` for JSON as the bridge reads it, where 1 and 1.0 differ: an integer is a
    number written without fraction or exponent (JSON Schema alone would also take 1.0)."""
    checker = validator_class.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    return jsonschema.validators.extend(validator_class, type_checker=checker)


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
    """An OpenAPI document: by default the push endpoint's, whose every answer has exactly the
    Content-Type `content_type`; `OpenApi.management()` is the management port's."""

    def __init__(self, folder: Path = CONTRACTS, name: str = "openapi.yaml",
                 content_type: str | None = "application/json; charset=UTF-8") -> None:
        self.path = (folder / name).resolve()
        self.doc = load(self.path)
        self.registry = registry(folder)
        self.content_type = content_type

    @classmethod
    def management(cls, folder: Path = CONTRACTS) -> OpenApi:
        return cls(folder, "openapi-management.yaml", None)

    @cached_property
    def push_path(self) -> str:
        (path,) = self.doc["paths"]
        return path

    def resolve(self, node: Any) -> Any:
        while isinstance(node, dict) and "$ref" in node:
            node = self.registry.resolver(self.path.as_uri()).lookup(node["$ref"]).contents
        return node

    def operations(self, router: bool = False) -> dict[str, dict]:
        """`METHOD path`, "other methods <path>" and "other paths" -> the responses documented there;
        with `router`, also "router": the answers the router in front of the replicas gives itself."""
        out = {}
        for path, item in self.doc["paths"].items():
            for method, operation in item.items():
                if method in METHODS:
                    out[f"{method.upper()} {path}"] = operation["responses"]
            if "x-other-methods" in self.doc:
                out[f"other methods {path}"] = self.doc["x-other-methods"]["responses"]
        if "x-trailing-slash" in self.doc:
            out["trailing slash"] = self.doc["x-trailing-slash"]["responses"]
        if "x-other-paths" in self.doc:
            out["other paths"] = self.doc["x-other-paths"]["responses"]
        if router and "x-router" in self.doc:
            out["router"] = self.doc["x-router"]["responses"]
        return out

    def where(self, method: str, path: str) -> str:
        """The entry of operations() that documents `method` on `path`."""
        if path not in self.doc["paths"]:
            trailing = "x-trailing-slash" in self.doc and path.endswith("/") and path[:-1] in self.doc["paths"]
            return "trailing slash" if trailing else "other paths"
        if method.lower() in self.doc["paths"][path]:
            return f"{method.upper()} {path}"
        return f"other methods {path}"

    def answers(self, router: bool = False) -> list[Answer]:
        """Every documented example answer (a replica's; with `router`, the router's own too)."""
        found = []
        for where, responses in self.operations(router).items():
            for status, response in responses.items():
                response = self.resolve(response)
                for media in response.get("content", {}).values():
                    for name, example in media.get("examples", {}).items():
                        value = example["value"]
                        retcode = value.get("retcode", "") if isinstance(value, dict) else ""
                        found.append(Answer(where, int(status), retcode, tuple(example.get("x-modes", MODES)), name))
        return found

    def pairs(self, mode: str) -> set[tuple[int, str]]:
        """The (status, retcode) pairs the document says a bridge in `mode` can answer."""
        return {(a.status, a.retcode) for a in self.answers() if mode in a.modes}

    def response(self, where: str, status: int) -> dict | None:
        return self.resolve(self.operations(router=True).get(where, {}).get(str(status)))

    def absolute(self, node: Any) -> Any:
        """`node` with every relative $ref made absolute (so it can be validated on its own)."""
        if isinstance(node, dict):
            return {k: (f"{self.path.as_uri()}{v}" if v.startswith("#") else self.path.parent.joinpath(v).resolve()
                        .as_uri()) if k == "$ref" and isinstance(v, str) and "://" not in v else self.absolute(v)
                    for k, v in node.items()}
        if isinstance(node, list):
            return [self.absolute(v) for v in node]
        return node

    def schema_validator(self, schema: dict, strict_types: bool = False) -> jsonschema.protocols.Validator:
        """A 2020-12 validator for a schema object of this document ($refs resolved in it); with
        `strict_types`, integers are told from whole floats (see strict())."""
        kind = strict(jsonschema.Draft202012Validator) if strict_types else jsonschema.Draft202012Validator
        return kind(self.absolute(schema), registry=self.registry, format_checker=FORMATS)

    def answer_problems(self, where: str, status: int, headers: dict[str, str], body: bytes,
                        head: bool = False) -> list[str]:
        """Why an observed answer does not match the document (empty when it does). The answer to
        a HEAD request (`head`) has no body; everything else about it must match."""
        response = self.response(where, status)
        if response is None:
            return [f"{where}: status {status} is not documented"]
        problems = []
        observed = headers.get("content-type", "")
        if self.content_type is not None and observed != self.content_type:
            problems.append(f"content-type {observed!r}, not {self.content_type!r}")
        if not response.get("content"):
            return [*problems, f"a body where none is documented: {body[:80]!r}"] if body else problems
        documented = {media.split(";")[0].strip(): spec for media, spec in response["content"].items()}
        media = documented.get(observed.split(";")[0].strip().lower())
        if media is None:
            return [*problems, f"content-type {observed!r} is not documented for {where} {status}"]
        if head or where.startswith("HEAD "):
            if body:
                problems.append("an answer to HEAD has a body")
        elif "json" in observed:
            try:
                problems += errors(self.schema_validator(media["schema"]), orjson.loads(body))
            except orjson.JSONDecodeError:
                problems.append(f"body is not JSON: {body[:80]!r}")
        else:
            problems += errors(self.schema_validator(media["schema"]), body.decode("utf-8", "replace"))
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
