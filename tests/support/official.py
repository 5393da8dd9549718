"""The official AMWA IS-04 schemas in ../shared/amwa, for checking what our APIs answer.

Tests call `assert_official(version, "node", body)`; when ../shared/amwa is not there, the test is skipped with the
reason. The schemas are only read from there, never copied into the project.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4
from twisted.trial.unittest import SkipTest

# ../shared/amwa beside the repository; NMOS_REF_AMWA points elsewhere (CI runs a copy of the tests).
AMWA = Path(os.environ.get("NMOS_REF_AMWA", Path(__file__).resolve().parents[2].parent / "shared" / "amwa"))
IS04 = AMWA / "is-04"
BASE = "https://official.amwa.invalid/is-04/"

# The formats nmos-testing checks (it builds FormatChecker(["ipv4", "ipv6", "uri"]), with rfc3987 for "uri", which
# the test extras install too).
FORMATS = FormatChecker([name for name in ("ipv4", "ipv6", "uri") if name in FormatChecker.checkers])

# Where a schema's file name differs between versions.
_ALIASES = {
    ("v1.0", "registrationapi-resource-post-request"): "registrationapi-v1.0-resource-post-request",
    ("v1.0", "queryapi-subscriptions-post-request"): "queryapi-v1.0-subscriptions-post-request",
    ("v1.0", "queryapi-subscriptions-websocket"): "queryapi-v1.0-subscriptions-websocket",
}


def require_official() -> Path:
    if not IS04.is_dir():
        raise SkipTest(f"the official AMWA schemas are not at {IS04} (../shared/amwa beside the repository)")
    return IS04


@cache
def _registry(version: str) -> Registry:
    folder = require_official() / version / "APIs" / "schemas"
    resources = []
    for path in folder.glob("*.json"):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resources.append((f"{BASE}{version}/{path.name}", Resource.from_contents(contents, DRAFT4)))
    return Registry().with_resources(resources)


@cache
def official_validator(version: str, name: str) -> Draft4Validator:
    """A validator for the official schema `name` (file name without .json) of IS-04 `version`."""
    name = _ALIASES.get((version, name), name)
    registry = _registry(version)
    uri = f"{BASE}{version}/{name}.json"
    registry.get_or_retrieve(uri)  # fails clearly for an unknown name
    return Draft4Validator({"$ref": uri}, registry=registry, format_checker=FORMATS)


def official_errors(version: str, name: str, document: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in official_validator(version, name).iter_errors(document)]


def assert_official(version: str, name: str, document: Any) -> None:
    """Fail unless `document` is valid against the official IS-04 `version` schema `name`."""
    errors = official_errors(version, name, document)
    assert not errors, f"not a valid {version} {name}: {errors[:5]}\n{json.dumps(document)[:2000]}"
