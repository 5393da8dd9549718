"""JSON Schema checks at the API edge: one compiled validator per (API version, schema), built on first use.

The schemas are the project's own, in ``schemas/<version>/``. fastjsonschema turns each into Python code once;
``$ref`` resolves through a fake base URI per version folder whose loader reads only from that folder. The validator
that checks every document is compiled without fastjsonschema's detailed exceptions, which cost most of the
compilation (about 105 ms for v1.3's six resource schemas, 40 ms without); the detailed one, which the error
messages need, is compiled only when a document of that schema first fails.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastjsonschema
from fastjsonschema import JsonSchemaValueException

from nmos_ref.model.versions import sort_versions

__all__ = ["FORMATS", "SchemaViolation", "Schemas"]

DRAFT4 = "http://json-schema.org/draft-04/schema#"
# ".invalid" never resolves (RFC 2606), so a mistaken $ref can never reach the network.
BASE_URI = "https://schemas.nmos-ref.invalid/"
ROOT_NAME = "$"  # how messages name the document itself: "$.data.id must match ..."

_VERSION = re.compile(r"v[0-9]+\.[0-9]+")
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_COMBINATORS = ("anyOf", "oneOf")


class SchemaViolation(ValueError):
    """A document does not match its schema; ``message`` says where and why."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path  # keys and array indexes from the document root

    def __str__(self) -> str:
        return self.message


# --- formats: the same functions serve the product (fastjsonschema) and the tests (jsonschema.FormatChecker).
# JSON Schema applies a format only to strings, so anything else passes.

# RFC 3986 absolute URI: scheme ":" then only URI characters (unreserved, reserved, %XX escapes).
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?:[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*")


def is_ipv4(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def is_ipv6(value: object) -> bool:
    """RFC 4291 text form; a zone ("%eth0") is not part of it."""
    if not isinstance(value, str):
        return True
    try:
        return not ipaddress.IPv6Address(value).scope_id
    except ValueError:
        return False


def is_uri(value: object) -> bool:
    return not isinstance(value, str) or _URI.fullmatch(value) is not None


# The formats the AMWA test suite asserts (ipv4, ipv6, uri). "hostname" is not asserted, as there: real Nodes
# report names such as "studio_1" (an underscore is no RFC 1123 name), and refusing their registration helps no one.
FORMATS: dict[str, Callable[[Any], bool]] = {
    "ipv4": is_ipv4,
    "ipv6": is_ipv6,
    "uri": is_uri,
}


# fastjsonschema asserts its own "hostname" unless told otherwise.
_COMPILED_FORMATS: dict[str, Callable[[Any], bool]] = {"hostname": lambda value: True, **FORMATS}



def _path(name: str) -> tuple[str | int, ...]:
    """fastjsonschema's "$.data.parents[2]" as ("data", "parents", 2)."""
    parts: list[str | int] = []
    for key, index in re.findall(r"\.([^.\[]*)|\[(\d+)\]", name[len(ROOT_NAME):]):
        parts.append(int(index) if index else key)
    return tuple(parts)


def _enum_constraints(branch: object) -> dict[str, list[Any]]:
    """The enums a branch puts on keys of the object itself (directly or in allOf): its discriminators."""
    found: dict[str, list[Any]] = {}
    if not isinstance(branch, dict):
        return found
    for part in [branch, *branch.get("allOf", [])]:
        if isinstance(part, dict):
            for key, sub in part.get("properties", {}).items():
                if isinstance(sub, dict) and isinstance(sub.get("enum"), list):
                    found[key] = sub["enum"]
    return found


def _aims_at(branch: object, value: object) -> int:
    """0 if the value contradicts a discriminator (format, type, ...) of this branch, else 1 + how many it meets."""
    if not isinstance(value, dict):
        return 1
    met = 0
    for key, allowed in _enum_constraints(branch).items():
        if key in value:
            if value[key] not in allowed:
                return 0
            met += 1
    return 1 + met


class Schemas:
    """The IS-04 schemas shipped with nmos-ref, compiled lazily and cached per (version, name)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else Path(__file__).resolve().parent / "schemas"
        self._validators: dict[tuple[str, str], Callable[..., Any]] = {}
        self._detailed: dict[tuple[str, str], Callable[..., Any]] = {}
        self._branches: dict[tuple[str, str], Callable[..., Any]] = {}
        self._texts: dict[str, str] = {}

    def versions(self) -> list[str]:
        """The version folders present, oldest first (v1.10 sorts after v1.9)."""
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if p.is_dir() and _VERSION.fullmatch(p.name)]
        return sort_versions(found)

    def has(self, version: str, name: str) -> bool:
        # Both come from URLs at times: only plain names, never a path outside the schema folder.
        return bool(
            _VERSION.fullmatch(version) and _NAME.fullmatch(name) and (self.root / version / f"{name}.json").is_file()
        )

    def check(self, version: str, name: str, document: object) -> None:
        """Raise SchemaViolation unless the document matches schemas/<version>/<name>.json; KeyError if none."""
        validate = self._validator(version, name)
        try:
            validate(document)
        except JsonSchemaValueException:
            pass
        else:
            return
        # The same verdict again, with the details the message is made of.
        try:
            self._detailed_validator(version, name)(document, name_prefix=ROOT_NAME)
        except JsonSchemaValueException as exc:
            raise self._violation(version, exc) from None
        raise AssertionError(f"the two validators of {version}/{name} disagree")  # the same schema: cannot happen

    # --- compiling

    def _validator(self, version: str, name: str) -> Callable[..., Any]:
        key = (version, name)
        validate = self._validators.get(key)
        if validate is None:
            if not self.has(version, name):
                raise KeyError(f"no schema {name!r} for IS-04 {version} in {self.root}")
            validate = self._compile({"$ref": f"{BASE_URI}{version}/{name}.json"}, detailed=False)
            self._validators[key] = validate
        return validate

    def _detailed_validator(self, version: str, name: str) -> Callable[..., Any]:
        key = (version, name)
        validate = self._detailed.get(key)
        if validate is None:
            validate = self._compile({"$ref": f"{BASE_URI}{version}/{name}.json"})
            self._detailed[key] = validate
        return validate

    def _compile(self, schema: dict[str, Any], detailed: bool = True) -> Callable[..., Any]:
        # use_default=False: fastjsonschema would otherwise write "default" values into the checked document.
        definition = {**schema, "$schema": DRAFT4}
        return fastjsonschema.compile(definition, handlers={"https": self._load}, formats=_COMPILED_FORMATS,
                                      use_default=False, detailed_exceptions=detailed)

    def _load(self, uri: str) -> Any:
        """Loader for $ref: only files of our own version folders."""
        text = self._texts.get(uri)
        if text is None:
            relative = uri.removeprefix(BASE_URI)
            version, _, file_name = relative.partition("/")
            if (
                not uri.startswith(BASE_URI)
                or not _VERSION.fullmatch(version)
                or not file_name.endswith(".json")
                or not _NAME.fullmatch(file_name[: -len(".json")])
            ):
                raise fastjsonschema.JsonSchemaDefinitionException(f"$ref outside the nmos-ref schemas: {uri}")
            text = (self.root / version / file_name).read_text(encoding="utf-8")
            self._texts[uri] = text
        return json.loads(text)  # a fresh copy: fastjsonschema may annotate what it is given

    # --- messages

    def _violation(self, version: str, exc: JsonSchemaValueException) -> SchemaViolation:
        exc = self._narrow(version, exc)
        message = exc.message
        forbidden = exc.rule_definition if exc.rule == "not" else None
        if isinstance(forbidden, dict) and "enum" in forbidden:
            message = f"{exc.name} must not be one of {forbidden['enum']}"
        elif isinstance(forbidden, dict) and "pattern" in forbidden:
            message = f"{exc.name} must not match pattern {forbidden['pattern']}"
        # Our patterns end in \n?\Z only to mirror the AMWA "$" under Python re; show the familiar "$".
        message = message.replace("\\n?\\Z", "$")
        if isinstance(exc.value, (str, int, float, bool)) or exc.value is None:
            shown = repr(exc.value)
            message += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
        return SchemaViolation(message, _path(exc.name or ROOT_NAME))

    def _narrow(self, version: str, exc: JsonSchemaValueException, depth: int = 0) -> JsonSchemaValueException:
        """Replace "cannot be validated by any definition" by the error of the branch the document aimed at.

        The aimed-at branch is the one whose enums (format, type, ref_type...) the document satisfies; among
        several, the deepest error wins (like jsonschema's best_match). Runs only on the error path.
        """
        branches = exc.definition.get(exc.rule) if isinstance(exc.definition, dict) else None
        if exc.rule not in _COMBINATORS or not isinstance(branches, list) or depth > 8:
            return exc
        if not all(isinstance(branch, dict) for branch in branches):
            return exc
        failures: list[tuple[int, JsonSchemaValueException]] = []
        for branch in branches:
            try:
                validate = self._branch(version, branch)
            except Exception:  # only the wording is at stake here: keep the plain error rather than fail
                return exc
            try:
                validate(exc.value, name_prefix=exc.name)
            except JsonSchemaValueException as inner:
                failures.append((_aims_at(branch, exc.value), inner))
            else:
                return exc  # a branch matches, so oneOf matched more than one: nothing narrower to say
        aimed = [(aims, inner) for aims, inner in failures if aims]
        if aimed:
            # Most discriminators matched first; a "must NOT match" says least about what is wrong; then depth.
            best = max(aimed, key=lambda pair: (pair[0], pair[1].rule != "not", len(pair[1].path)))[1]
            return self._narrow(version, best, depth + 1)
        discriminator = self._discriminator_error(exc, branches)
        if discriminator is not None:
            return discriminator
        closest = max((inner for _, inner in failures), key=lambda e: len(e.path), default=None)
        if closest is not None:
            exc.message += f"; closest: {self._narrow(version, closest, depth + 1).message}"
        return exc

    @staticmethod
    def _discriminator_error(exc: JsonSchemaValueException, branches: list[Any]) -> JsonSchemaValueException | None:
        """When every branch fixes the same key by enum and the document matches none: name that key."""
        value = exc.value
        constraints = [_enum_constraints(branch) for branch in branches]
        if not isinstance(value, dict) or not constraints:
            return None
        for key in sorted(set.intersection(*(set(c) for c in constraints))):
            allowed = [item for c in constraints for item in c[key]]
            if key in value and value[key] not in allowed:
                name = f"{exc.name}.{key}"
                return JsonSchemaValueException(
                    f"{name} must be one of {allowed}", value=value[key], name=name, rule="enum"
                )
        return None

    def _branch(self, version: str, branch: Any) -> Callable[..., Any]:
        """A validator for one anyOf/oneOf branch; its relative $refs name files of the version folder."""
        key = (version, json.dumps(branch, sort_keys=True))
        validate = self._branches.get(key)
        if validate is None:
            validate = self._compile({**branch, "id": f"{BASE_URI}{version}/"})
            self._branches[key] = validate
        return validate
