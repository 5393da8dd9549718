"""Helpers for tests/test_schemas.py: the official AMWA schemas as judge, example mapping, generators and mutants.

Nothing here is product code. The official side runs jsonschema's Draft4Validator over the untouched AMWA files
(through a referencing.Registry) with a FormatChecker made of nmos_ref.validation.FORMATS, so both sides share
format semantics and any disagreement is about schema structure.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import random
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import referencing
from hypothesis import strategies as st
from hypothesis.errors import HypothesisWarning
from hypothesis_jsonschema import from_schema

from nmos_ref.validation import FORMATS, Schemas, SchemaViolation

# ../shared/amwa beside the repository; NMOS_REF_AMWA points elsewhere (CI runs a copy of the tests).
AMWA = Path(os.environ.get("NMOS_REF_AMWA", Path(__file__).resolve().parents[2].parent / "shared" / "amwa")) / "is-04"
OFFICIAL_BASE = "https://amwa.invalid/is-04/"
DRAFT4 = "http://json-schema.org/draft-04/schema#"
_SCHEMA_MAPS = ("properties", "patternProperties", "definitions")  # their keys are names, not keywords

RESOURCES = ("node", "device", "source", "flow", "sender", "receiver")
COLLECTIONS = {
    **{name: f"{name}s" for name in RESOURCES},
    "queryapi-subscription-response": "queryapi-subscriptions-response",
}


def official_versions() -> list[str]:
    if not AMWA.is_dir():
        return []
    return sorted(
        (p.name for p in AMWA.iterdir() if (p / "APIs" / "schemas").is_dir()),
        key=lambda v: tuple(int(x) for x in v[1:].split(".")),
    )


def official_dir(version: str) -> Path:
    return AMWA / version / "APIs" / "schemas"


def official_file(version: str, name: str) -> str | None:
    """The AMWA file for one of our schema names (v1.0 spells some as "<api>-v1.0-<rest>.json")."""
    folder = official_dir(version)
    if (folder / f"{name}.json").is_file():
        return f"{name}.json"
    api, _, rest = name.partition("-")
    versioned = f"{api}-{version}-{rest}.json"
    return versioned if (folder / versioned).is_file() else None


def normalized(path: Path) -> str:
    """A digest of a schema file with annotations dropped and keys sorted: equal digests mean a copy."""

    def strip(node: Any, names: bool = False) -> Any:
        if isinstance(node, dict):
            return {
                k: strip(v, k in _SCHEMA_MAPS)
                for k, v in node.items()
                if names or k not in ("description", "title", "$schema", "id", "$id")
            }
        if isinstance(node, list):
            return [strip(item) for item in node]
        return node

    document = strip(json.loads(path.read_text(encoding="utf-8")))
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def texts(path: Path) -> set[str]:
    """The description and title texts of a schema file (longer than a few words)."""
    found: set[str] = set()

    def walk(node: Any, names: bool = False) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if not names and key in ("description", "title") and isinstance(value, str):
                    if len(value) > 24:
                        found.add(value)
                else:
                    walk(value, key in _SCHEMA_MAPS)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(path.read_text(encoding="utf-8")))
    return found


# --- verdicts ------------------------------------------------------------------------------------------------


def format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())
    for name, function in FORMATS.items():
        checker.checks(name)(function)
    return checker


@functools.cache
def official_validator(version: str, file_name: str) -> jsonschema.Draft4Validator:
    folder = official_dir(version)
    base = f"{OFFICIAL_BASE}{version}/"
    resources = [
        (base + path.name, referencing.Resource.from_contents(json.loads(path.read_text(encoding="utf-8"))))
        for path in sorted(folder.glob("*.json"))
    ]
    registry = referencing.Registry().with_resources(resources)
    return jsonschema.Draft4Validator({"$ref": base + file_name}, registry=registry, format_checker=format_checker())


def official_valid(version: str, file_name: str, document: object) -> bool:
    return official_validator(version, file_name).is_valid(document)


def official_verdict(version: str, file_name: str, document: object) -> tuple[bool, str]:
    """The verdict with a reason (slower: collects every error to pick the best one)."""
    error = jsonschema.exceptions.best_match(official_validator(version, file_name).iter_errors(document))
    if error is None:
        return True, "valid"
    where = "/".join(str(p) for p in error.absolute_path)
    return False, f"at /{where}: {error.message[:300]}"


@functools.cache
def our_schemas() -> Schemas:
    return Schemas()


def our_verdict(version: str, name: str, document: object) -> tuple[bool, str]:
    try:
        our_schemas().check(version, name, document)
    except SchemaViolation as violation:
        return False, violation.message[:300]
    return True, "valid"


def disagreement(
    version: str, name: str, file_name: str, document: object, theirs: tuple[bool, str], ours: tuple[bool, str]
) -> str:
    shown = json.dumps(document, sort_keys=True)
    if len(shown) > 3000:
        shown = shown[:3000] + "...(truncated)"
    return (
        f"{version} schema {name} (official {file_name}):\n"
        f"  official: {'VALID' if theirs[0] else 'INVALID'} ({theirs[1]})\n"
        f"  ours:     {'VALID' if ours[0] else 'INVALID'} ({ours[1]})\n"
        f"  document: {shown}"
    )


class Tally:
    """Counts compared documents and keeps the disagreements for one message at the end."""

    def __init__(self) -> None:
        self.valid = 0
        self.invalid = 0
        self.per_schema: dict[str, int] = {}
        self.disagreements: list[str] = []

    @property
    def compared(self) -> int:
        return self.valid + self.invalid

    def compare(self, version: str, name: str, document: object) -> bool:
        """Both verdicts on one document; returns the official one."""
        file_name = official_file(version, name)
        assert file_name, f"no official schema for {name} in {version}"
        valid = official_valid(version, file_name, document)
        ours = our_verdict(version, name, document)  # leaves the document alone: see test_check_leaves_...
        if valid != ours[0]:
            theirs = official_verdict(version, file_name, document)
            self.disagreements.append(disagreement(version, name, file_name, document, theirs, ours))
        elif valid:
            self.valid += 1
        else:
            self.invalid += 1
        self.per_schema[name] = self.per_schema.get(name, 0) + 1
        return valid

    def report(self, limit: int = 5) -> str:
        head = f"{len(self.disagreements)} disagreement(s) in {self.compared + len(self.disagreements)} documents"
        return "\n".join([head, *self.disagreements[:limit]])


# --- examples ------------------------------------------------------------------------------------------------


def example_target(file_name: str) -> tuple[str, bool]:
    """(our schema name, whether the example is a list of those) for an AMWA example file name.

    "queryapi-v1.1-nodeid-get-200.json" -> ("node", False); "queryapi-nodes-get-200.json" -> ("node", True).
    """
    stem = re.sub(r"-v[0-9]+\.[0-9]+-", "-", file_name.removesuffix(".json"), count=1)
    api, _, rest = stem.partition("-")
    what, _, action = rest.partition("-")
    if what == "base":
        return f"{api}-base", False
    if what == "self":
        return "node", False
    if what.endswith("id") and what[:-2] in RESOURCES:
        return what[:-2], False
    if what.endswith("s") and what[:-1] in RESOURCES:
        return what[:-1], True
    if what == "receivertarget":
        return "nodeapi-receiver-target", False
    if what == "subscriptionid" or (what == "subscriptions" and action == "post-200"):
        return "queryapi-subscription-response", False
    if what == "subscriptions":
        if action == "post-request":
            return "queryapi-subscriptions-post-request", False
        return "queryapi-subscription-response", True
    if what == "health":
        return "registrationapi-health-response", False
    if what == "resource":
        if action == "post-request":
            return "registrationapi-resource-post-request", False
        return "registrationapi-resource-response", False
    raise LookupError(f"no schema known for example {file_name}")


def examples(version: str) -> list[Path]:
    return sorted((AMWA / version / "examples").glob("*.json"))


# --- generation ----------------------------------------------------------------------------------------------
# hypothesis-jsonschema is slow on the AMWA schemas as written (allOf chains, oneOf over whole resources, unbounded
# arrays of objects with random extra keys). For generation only, a bundled copy is reshaped: refs inlined, allOf
# merged, oneOf read as anyOf and distributed over sibling keywords, arrays and extra keys capped, UUID patterns
# served by a fast strategy. Generated documents may therefore be invalid now and then; the judges always see the
# untouched official files, and a document counts whatever its verdict, as long as both sides give the same one.

_UUID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"


def bundle(version: str, file_name: str) -> dict[str, Any]:
    """The official schema with every $ref inlined (draft-04: a $ref replaces its siblings)."""
    folder = official_dir(version)

    @functools.cache
    def load(name: str) -> Any:
        return json.loads((folder / name).read_text(encoding="utf-8"))

    def inline(node: Any, base: str) -> Any:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                target, _, fragment = node["$ref"].partition("#")
                target = target or base
                found = load(target)
                for part in filter(None, fragment.split("/")):
                    found = found[part]
                return inline(found, target)
            return {
                k: {n: inline(s, base) for n, s in v.items()} if k in _SCHEMA_MAPS else inline(v, base)
                for k, v in node.items()
                if k not in ("$schema", "description", "title", "default")
            }
        if isinstance(node, list):
            return [inline(item, base) for item in node]
        return node

    return inline(load(file_name), file_name)


def _flatten(node: dict[str, Any]) -> list[dict[str, Any]]:
    parts = [{k: v for k, v in node.items() if k != "allOf"}]
    for part in node.get("allOf", []):
        parts += _flatten(part)
    return parts


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """allOf of object schemas as one schema; what does not merge simply stays in an allOf."""
    out: dict[str, Any] = {}
    leftovers: list[dict[str, Any]] = []
    for part in parts:
        for key, value in part.items():
            if key == "required":
                out["required"] = sorted(set(out.get("required", [])) | set(value))
            elif key == "properties":
                props = out.setdefault("properties", {})
                for name, sub in value.items():
                    props[name] = _merge([props[name], sub]) if name in props else sub
            elif key in out and out[key] != value:
                leftovers.append({key: value})
            else:
                out[key] = value
    return {**out, "allOf": leftovers} if leftovers else out


def _reshape(node: Any) -> Any:
    if isinstance(node, list):
        return [_reshape(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "oneOf" in node:
        node["anyOf"] = node.pop("oneOf")
    if "allOf" in node:
        node = _merge(_flatten(node))
    node = {
        k: ({n: _reshape(s) for n, s in v.items()} if k in ("properties", "patternProperties") else _reshape(v))
        if k != "enum"
        else v
        for k, v in node.items()
    }
    if "anyOf" in node and any(k in node for k in ("properties", "required")):
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        node = {"anyOf": [_reshape(_merge([rest, branch])) for branch in node["anyOf"]]}
    if node.get("pattern") == _UUID_PATTERN:
        node = {k: v for k, v in node.items() if k != "pattern"} | {"format": "x-uuid"}
    if node.get("type") == "array" or "items" in node:
        node.setdefault("maxItems", max(3, node.get("minItems", 0)))
    if "anyOf" not in node and (node.get("type") == "object" or "properties" in node):
        node.setdefault("maxProperties", len(node.get("properties", {})) + 2)
    return node


_UUIDS = st.uuids(version=4).map(str) | st.sampled_from(
    ["c62ee6b0-c2fe-4ce1-8be7-d2b6b7e4b6f5", "2a4b8c1d-53a2-1e7f-9b0c-71d5a2f0e3c4", "0e0f81a6-bc5c-5d3e-8c4e-0a0b1c2d3e4f"]
)
_HOSTS = st.sampled_from(["host1", "a", "node-1.example.com", "x" * 63, "10.0.0.1", "b.c"])
_URIS = st.sampled_from(
    [
        "http://172.29.80.65:12345/",
        "https://registry.example.com/x-nmos/registration/v1.2/",
        "urn:x-manufacturer:service:tally",
        "ws://[::1]:8870/ws/?uid=7c903667-7113-4a8f-8865-1c63f9070a9e",
        "mailto:ops@example.com",
        "a:",
    ]
)
CUSTOM_FORMATS = {
    "x-uuid": _UUIDS,
    "uri": _URIS,
    "hostname": _HOSTS,
    "ipv4": st.ip_addresses(v=4).map(str),
    "ipv6": st.ip_addresses(v=6).map(str),
}


def _without(node: Any, names: frozenset[str]) -> Any:
    """The schema with the named properties left out (not forbidden: just never generated)."""
    if isinstance(node, list):
        return [_without(item, names) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _without(v, names) for k, v in node.items()}
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: v for k, v in out["properties"].items() if k not in names}
    if isinstance(out.get("required"), list):
        out["required"] = [k for k in out["required"] if k not in names]
    return out


@functools.cache
def generation_schema(version: str, file_name: str, leave_out: frozenset[str] = frozenset()) -> dict[str, Any]:
    return {**_reshape(_without(bundle(version, file_name), leave_out)), "$schema": DRAFT4}


@functools.cache
def documents(version: str, file_name: str, leave_out: frozenset[str] = frozenset()) -> st.SearchStrategy[Any]:
    """Documents hypothesis-jsonschema draws from (a generation copy of) an official schema."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HypothesisWarning)  # overriding uri/hostname/... is intended
        return from_schema(generation_schema(version, file_name, leave_out), custom_formats=CUSTOM_FORMATS)


# --- mutants -------------------------------------------------------------------------------------------------


def _nodes(document: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, document
    if isinstance(document, dict):
        for key, value in document.items():
            yield from _nodes(value, (*path, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from _nodes(value, (*path, index))


def _replace(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return document


@functools.cache
def enum_pool(version: str) -> tuple[str, ...]:
    """Every string any official schema of this version lists in an enum: plausible wrong values."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "enum" and isinstance(value, list):
                    found.update(v for v in value if isinstance(v, str))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for path in official_dir(version).glob("*.json"):
        walk(json.loads(path.read_text(encoding="utf-8")))
    return tuple(sorted(found))


@functools.cache
def key_pool(version: str) -> tuple[str, ...]:
    found: set[str] = set()
    for path in official_dir(version).glob("*.json"):
        found.update(re.findall(r'"([A-Za-z_]+)"\s*:\s*\{', path.read_text(encoding="utf-8")))
    return tuple(sorted(found - {"properties", "items", "definitions", "patternProperties", "not"}))


_OTHER_TYPES = [None, True, False, 0, 7, -1, 1.0, 2.5, "", "x", "12", [], ["x"], {}, {"x": 1}]


def _bad_string(value: str, rng: random.Random, version: str) -> str:
    choices = [
        value + "\n",  # Python's "$" quirk: accepted by the AMWA patterns
        value + "\n\n",
        value + " ",
        " " + value,
        value.upper(),
        value[:-1],
        value + "0",
        "g" + value[1:],
        "",
        "1.2",
        "v1.2",
        "1441973902:879053935",
        "0:0\n",
        "not a uri",
        "http://exa mple.com/",
        "urn:x-nmos:" + value.rpartition(":")[2],
        rng.choice(enum_pool(version) or ("x",)),
    ]
    if re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", value):
        choices += [value[:14] + "6" + value[15:], value[:14] + "0" + value[15:], value[:19] + "c" + value[20:]]
    return rng.choice(choices)


def mutate(document: Any, rng: random.Random, version: str) -> Any:
    """One random change somewhere in a copy of the document: the mutants of the brief."""
    doc = copy.deepcopy(document)
    nodes = list(_nodes(doc))
    path, value = rng.choice(nodes)
    kind = rng.choice(["remove", "type", "string", "enum", "extra", "array", "array", "string", "number"])
    if kind == "remove":
        owners = [(p, v) for p, v in nodes if isinstance(v, dict) and v]
        if owners:
            owner_path, owner = rng.choice(owners)
            del owner[rng.choice(sorted(owner))]
            return doc
    if kind == "string" or (kind == "enum" and isinstance(value, str)):
        strings = [(p, v) for p, v in nodes if isinstance(v, str)]
        if strings:
            path, value = rng.choice(strings)
            new = _bad_string(value, rng, version) if kind == "string" else rng.choice(enum_pool(version) or ("x",))
            return _replace(doc, path, new)
    if kind == "extra":
        owners = [v for _, v in nodes if isinstance(v, dict)]
        if owners:
            owner = rng.choice(owners)
            owner[rng.choice([*key_pool(version), "x-extra"])] = rng.choice(_OTHER_TYPES + list(enum_pool(version)[:5]))
            return doc
    if kind == "array":
        arrays = [v for _, v in nodes if isinstance(v, list)]
        if arrays:
            array = rng.choice(arrays)
            action = rng.choice(["duplicate", "clear", "append"])
            if action == "duplicate" and array:
                array.append(copy.deepcopy(rng.choice(array)))
            elif action == "clear":
                array.clear()
            else:
                array.append(rng.choice(_OTHER_TYPES))
            return doc
    if kind == "number":
        numbers = [(p, v) for p, v in nodes if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if numbers:
            path, value = rng.choice(numbers)
            return _replace(doc, path, rng.choice([*_NUMBERS, value + 1, value - 1, -value]))
    # wrong type (also the fallback when the chosen kind found nothing to work on)
    return _replace(doc, path, rng.choice([t for t in _OTHER_TYPES if type(t) is not type(value)]))


def edge_mutants(document: Any, rng: random.Random, limit: int = 40) -> list[Any]:
    """Systematic single changes, sampled down to ``limit``, where a hand-written schema is easy to get wrong.

    Every string gets a trailing newline (AMWA patterns end in "$", which Python's re lets match before a final
    "\\n"); every integer becomes the equal float (draft-04: 1.0 is not an integer) and a neighbour or a common
    bound; every array is emptied and gets its first item repeated (minItems, uniqueItems); every key is left out.
    """
    changes: list[tuple[tuple[Any, ...], Any]] = []
    for path, value in _nodes(document):
        if isinstance(value, str):
            changes.append((path, value + "\n"))
        elif isinstance(value, int) and not isinstance(value, bool):
            changes.append((path, float(value)))
            changes.append((path, rng.choice(_NUMBERS + [value + 1, value - 1])))
        elif isinstance(value, list):
            changes.append((path, []))
            if value:
                changes.append((path, [*value, copy.deepcopy(value[0])]))
        if isinstance(value, dict):
            changes += [((*path, key), _REMOVE) for key in value]
    if len(changes) > limit:
        changes = rng.sample(changes, limit)
    mutants = []
    for path, new in changes:
        doc = copy.deepcopy(document)
        if new is _REMOVE:
            parent = doc
            for step in path[:-1]:
                parent = parent[step]
            del parent[path[-1]]
        else:
            _replace(doc, path, copy.deepcopy(new))
        mutants.append(doc)
    return mutants


_REMOVE = object()
_NUMBERS = [0, -1, 1, 2.5, 399, 400, 599, 600, 65535, 65536, 2**63]
