"""Our schemas (schemas/<version>/, checked through nmos_ref.validation.Schemas) judge like the AMWA ones.

For every version folder we ship that also exists in ../shared/amwa/is-04: the official examples, then documents
drawn by hypothesis-jsonschema from the official schemas and mutants of those and of the examples. The official
verdict comes from jsonschema's Draft4Validator over the untouched AMWA files; both sides use the same format
functions (nmos_ref.validation.FORMATS), so a disagreement is a difference of schema structure.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from nmos_ref import validation
from nmos_ref.validation import FORMATS, Schemas, SchemaViolation
from tests.support.cases import SkipTest, UnitTest, cases, skip_case

try:
    import tests.support.schemas as support
except ImportError:  # tests/ became a package
    from tests import schema_support as support


def _version_params() -> list[object]:
    ours = Schemas().versions()
    if not support.AMWA.is_dir():
        reason = f"official AMWA IS-04 schemas not found at {support.AMWA}"
        return [skip_case(v, reason=reason) for v in ours or ["(none)"]]
    theirs = set(support.official_versions())
    return [
        v if v in theirs else skip_case(v, reason=f"no official schemas for {v}")
        for v in ours
    ]


VERSIONS = _version_params()

# Examples the official schemas reject themselves; both sides must still agree on them. All others must be valid.
KNOWN_INVALID_EXAMPLES = {
    # The Sender given as target has no "version", which the v1.0 sender schema requires.
    "nodeapi-v1.0-receivertarget-put-200.json": "sender without version",
    "nodeapi-v1.0-receivertarget-put-request.json": "sender without version",
}

# What hypothesis-jsonschema draws from, per version; the WebSocket grain is assembled below.
TARGETS = (
    *support.RESOURCES,
    "registrationapi-resource-post-request",
    "nodeapi-receiver-target",
    "queryapi-subscriptions-post-request",
    "queryapi-subscription-response",
    "registrationapi-health-response",
    "error",
)
DRAWS_PER_TARGET = 8
MUTANTS_PER_DOCUMENT = 6
EDGES_PER_DOCUMENT = 20
MUTANTS_PER_EXAMPLE = 6
EDGES_PER_EXAMPLE = 40
SEED = 20240611


def _settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        derandomize=True,  # fixed sequence, no example database: the same documents on every run
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def _draw(version: str, name: str, count: int) -> list[object]:
    """Documents hypothesis-jsonschema draws from the official schema named by our schema name."""
    strategy = support.documents(version, support.official_file(version, name))
    drawn: list[object] = []

    @_settings(count)
    @given(strategy)
    def collect(document: object) -> None:
        drawn.append(document)

    collect()
    return drawn


# --- (a) the official examples -------------------------------------------------------------------------------

class OfficialExampleTests(UnitTest):
    @cases("version", VERSIONS)
    def test_official_examples(self, version: str) -> None:
        tally = support.Tally()
        schemas = support.our_schemas()
        invalid: list[str] = []
        files = support.examples(version)
        assert files, f"no examples for {version}"
        for path in files:
            name, is_list = support.example_target(path.name)
            if not schemas.has(version, name):
                continue  # an optional body we do not ship (test_schema_files checks the required ones)
            document = json.loads(path.read_text(encoding="utf-8"))
            if is_list and schemas.has(version, support.COLLECTIONS[name]):
                valid = tally.compare(version, support.COLLECTIONS[name], document)
            elif is_list:
                valid = all([tally.compare(version, name, item) for item in document])
            else:
                valid = tally.compare(version, name, document)
            if not valid and path.name not in KNOWN_INVALID_EXAMPLES:
                invalid.append(path.name)
        assert not tally.disagreements, tally.report()
        assert not invalid, f"{version}: official examples rejected by the official schemas: {invalid}"


# --- (b) generated documents and mutants ---------------------------------------------------------------------


def _compare_with_mutants(
    tally: support.Tally, version: str, name: str, document: object, rng: random.Random, mutants: int, edges: int
) -> None:
    """The document, random mutants of it, and a sample of its systematic edge mutants."""
    tally.compare(version, name, document)
    for _ in range(mutants):
        tally.compare(version, name, support.mutate(document, rng, version))
    for mutant in support.edge_mutants(document, rng, edges):
        tally.compare(version, name, mutant)


class GeneratedDocumentTests(UnitTest):
    @cases("version", VERSIONS)
    def test_generated_documents_agree(self, version: str) -> None:
        tally = support.Tally()
        schemas = support.our_schemas()
        rng = random.Random(f"{SEED}-{version}")
        resources: list[tuple[str, object]] = []

        for name in TARGETS:
            if not (schemas.has(version, name) and support.official_file(version, name)):
                continue
            for document in _draw(version, name, DRAWS_PER_TARGET):
                _compare_with_mutants(tally, version, name, document, rng, MUTANTS_PER_DOCUMENT, EDGES_PER_DOCUMENT)
                if name in support.RESOURCES:
                    resources.append((name, document))

        # Every resource also as a Registration API response (oneOf over all six types) and in a collection,
        # where the same resource twice, even with its keys in another order, breaks uniqueItems.
        for name, document in resources:
            tally.compare(version, "registrationapi-resource-response", document)
            tally.compare(version, "registrationapi-resource-response", support.mutate(document, rng, version))
            collection = support.COLLECTIONS[name]
            if schemas.has(version, collection):
                reordered = dict(reversed(list(document.items()))) if isinstance(document, dict) else document
                tally.compare(version, collection, [document])
                tally.compare(version, collection, [document, reordered])
                tally.compare(version, collection, [document, support.mutate(document, rng, version)])

        # WebSocket grains: hypothesis draws the envelope; pre/post come from the resources drawn above.
        grain = "queryapi-subscriptions-websocket"
        if schemas.has(version, grain) and support.official_file(version, grain) and resources:
            strategy = support.documents(version, support.official_file(version, grain), frozenset({"pre", "post"}))
            envelopes: list[object] = []

            @_settings(DRAWS_PER_TARGET)
            @given(strategy)
            def collect(document: object) -> None:
                envelopes.append(document)

            collect()
            for envelope in envelopes:
                for change in envelope["grain"]["data"]:  # the generation schema always gives grain.data
                    for side in rng.sample(["pre", "post"], rng.randint(0, 2)):
                        change[side] = copy.deepcopy(rng.choice(resources)[1])
                _compare_with_mutants(tally, version, grain, envelope, rng, MUTANTS_PER_DOCUMENT, EDGES_PER_DOCUMENT)

        # Mutants of the official examples (each element of a list example on its own).
        for path in support.examples(version):
            name, is_list = support.example_target(path.name)
            if not schemas.has(version, name):
                continue
            document = json.loads(path.read_text(encoding="utf-8"))
            for item in document if is_list else [document]:
                _compare_with_mutants(tally, version, name, item, rng, MUTANTS_PER_EXAMPLE, EDGES_PER_EXAMPLE)

        assert not tally.disagreements, tally.report()
        assert tally.compared >= 1000, f"{version}: only {tally.compared} documents compared"
        assert tally.valid >= 200 and tally.invalid >= 200, f"{version}: {tally.valid} valid, {tally.invalid} invalid"
        for name in (*support.RESOURCES, "registrationapi-resource-post-request"):
            assert tally.per_schema.get(name, 0) >= DRAWS_PER_TARGET, f"{version}: too few {name} documents"

    @cases("version", VERSIONS)
    @cases(
        "first, second",
        [(True, 1), (1, 1.0), (0, False), ([1], [True]), ({"a": 1, "b": 2}, {"b": 2, "a": 1}), ([], {}), (None, False)],
    )
    def test_unique_items_semantics(self, version: str, first: object, second: object) -> None:
        """uniqueItems: jsonschema and fastjsonschema must agree on what counts as the same item (1 == 1.0, True != 1)."""
        if not Schemas().has(version, "nodes"):
            raise SkipTest(f"no nodes collection schema in our {version}")
        node = json.loads(next((support.AMWA / version / "examples").glob("queryapi-*nodeid-get-200.json")).read_text())
        pair = [{**node, "caps": {"x": first}}, {**node, "caps": {"x": second}}]
        tally = support.Tally()
        tally.compare(version, "nodes", pair)
        assert not tally.disagreements, tally.report()


# --- the schema files themselves ------------------------------------------------------------------------------

REQUIRED_FILES = (
    *support.RESOURCES,
    "registrationapi-resource-post-request",
    "registrationapi-resource-response",
    "registrationapi-health-response",
    "error",
    "queryapi-subscriptions-post-request",
    "queryapi-subscription-response",
    "queryapi-subscriptions-websocket",
    "nodeapi-receiver-target",
)


class SchemaFileTests(UnitTest):
    @cases("version", Schemas().versions())
    def test_schema_files(self, version: str) -> None:
        """Each version has the files the product asks for, all draft-04 that fastjsonschema and jsonschema accept."""
        schemas = Schemas()
        assert [name for name in REQUIRED_FILES if not schemas.has(version, name)] == []
        for path in sorted((schemas.root / version).glob("*.json")):
            schema = json.loads(path.read_text(encoding="utf-8"))
            assert schema.get("$schema") == "http://json-schema.org/draft-04/schema#", path.name
            jsonschema.Draft4Validator.check_schema(schema)
        for name in REQUIRED_FILES:
            with contextlib.suppress(SchemaViolation):
                schemas.check(version, name, {})  # compiles, $refs resolve

    @cases("version", VERSIONS)
    def test_schemas_are_our_own(self, version: str) -> None:
        """No file is an AMWA file re-serialised, and no AMWA description text is reused."""
        official = {support.normalized(path) for path in support.official_dir(version).glob("*.json")}
        descriptions = {text for path in support.official_dir(version).glob("*.json") for text in support.texts(path)}
        ours = sorted((Schemas().root / version).glob("*.json"))
        assert [path.name for path in ours if support.normalized(path) in official] == []
        assert [(path.name, text) for path in ours for text in support.texts(path) if text in descriptions] == []


# --- Schemas and FORMATS themselves --------------------------------------------------------------------------


def _write(root: Path, version: str, name: str, schema: dict[str, object]) -> None:
    (root / version).mkdir(parents=True, exist_ok=True)
    (root / version / f"{name}.json").write_text(json.dumps(schema), encoding="utf-8")


class SchemasAndFormatsTests(UnitTest):
    def test_versions_sorted_numerically(self, tmp_path: Path) -> None:
        for name in ["v1.10", "v1.9", "v1.2", "v2.0", "notes", "v1"]:
            (tmp_path / name).mkdir()
        (tmp_path / "v1.3").write_text("a file, not a folder")
        assert Schemas(tmp_path).versions() == ["v1.2", "v1.9", "v1.10", "v2.0"]

    def test_default_root_is_the_shipped_folder(self) -> None:
        schemas = Schemas()
        assert schemas.root == Path(validation.__file__).resolve().parent / "schemas"
        assert {"v1.0", "v1.1"} <= set(schemas.versions())
        assert schemas.has("v1.0", "registrationapi-resource-post-request")
        assert not schemas.has("v1.0", "nope")

    def test_unknown_or_unsafe_names_are_key_errors(self) -> None:
        schemas = Schemas()
        for version, name in [("v1.1", "nope"), ("v9.9", "node"), ("v1.1", "../v1.0/node"), ("..", "node")]:
            assert not schemas.has(version, name)
            with pytest.raises(KeyError):
                schemas.check(version, name, {})

    def test_each_schema_is_compiled_once_and_with_details_only_once_a_document_fails(self, tmp_path: Path) -> None:
        _write(tmp_path, "v1.0", "thing", {"type": "object", "properties": {"id": {"$ref": "parts.json#/definitions/id"}}})
        _write(tmp_path, "v1.0", "parts", {"definitions": {"id": {"type": "string", "pattern": "^[a-z]+\\n?\\Z"}}})
        compiled: list[bool] = []  # detailed_exceptions of each compilation
        real_compile = fastjsonschema.compile

        def counting_compile(*args: object, **kwargs: Any) -> object:
            compiled.append(kwargs.get("detailed_exceptions", True))
            return real_compile(*args, **kwargs)

        self.patch(validation.fastjsonschema, "compile", counting_compile)
        schemas = Schemas(tmp_path)
        for _ in range(3):
            schemas.check("v1.0", "thing", {"id": "abc"})
        assert compiled == [False]
        for _ in range(2):
            with pytest.raises(SchemaViolation) as caught:
                schemas.check("v1.0", "thing", {"id": "ABC"})
            assert caught.value.path == ("id",) and "$.id must match pattern ^[a-z]+$" in caught.value.message
        assert compiled == [False, True]

    def test_violation_names_the_offending_key(self) -> None:
        if not support.AMWA.is_dir():
            raise SkipTest(f"official AMWA IS-04 examples not found at {support.AMWA}")
        node = json.loads((support.AMWA / "v1.1/examples/queryapi-v1.1-nodeid-get-200.json").read_text())
        body = {"type": "node", "data": {**node, "version": "1.2"}}
        with pytest.raises(SchemaViolation) as caught:
            Schemas().check("v1.1", "registrationapi-resource-post-request", body)
        violation = caught.value
        assert violation.path == ("data", "version")
        assert "$.data.version" in violation.message and "'1.2'" in violation.message
        assert str(violation) == violation.message

        # Inside anyOf/oneOf the message comes from the branch the document aimed at, not "no definition matched".
        flow = json.loads((support.AMWA / "v1.1/examples/queryapi-v1.1-flows-get-200.json").read_text())[1]
        del flow["components"]  # a video/raw flow without components
        with pytest.raises(SchemaViolation, match=r"components"):
            Schemas().check("v1.1", "registrationapi-resource-post-request", {"type": "flow", "data": flow})
        with pytest.raises(SchemaViolation, match=r"\$\.type must be one of"):
            Schemas().check("v1.1", "registrationapi-resource-post-request", {"type": "nodes", "data": node})

    def test_check_leaves_the_document_alone(self, tmp_path: Path) -> None:
        # fastjsonschema inserts "default" values unless told not to; a request body must come out as it went in.
        _write(tmp_path, "v1.0", "thing", {"type": "object", "properties": {"n": {"type": "integer", "default": 100}}})
        document: dict[str, object] = {}
        Schemas(tmp_path).check("v1.0", "thing", document)
        assert document == {}

    @cases(
        "name, good, bad",
        [
            ("ipv4", ["172.29.80.65", "0.0.0.0"], ["256.1.1.1", "1.2.3", "01.2.3.4", " 1.2.3.4", "1.2.3.4\n"]),
            ("ipv6", ["::1", "fe80::1", "::ffff:1.2.3.4"], ["fe80::1%eth0", ":::", "1.2.3.4", "g::1"]),
            (
                "uri",
                ["http://a/b?c#d", "urn:x-nmos:format:video", "a:", "ws://[::1]:80/", "http://a/%20"],
                ["", "no scheme", "1http://a", "http://a b", "http://a/%zz", "http://a/\n", "http://é/"],
            ),
        ],
        ids=["ipv4", "ipv6", "uri"],
    )
    def test_formats(self, name: str, good: list[str], bad: list[str]) -> None:
        check = FORMATS[name]
        assert [value for value in good if not check(value)] == []
        assert [value for value in bad if check(value)] == []
        assert all(check(value) for value in [None, 1, 2.5, True, [], {}])  # formats only judge strings

    @cases("version", ["v1.0", "v1.1", "v1.2", "v1.3"])
    def test_hostname_format_is_not_asserted(self, version: str) -> None:
        # As in the AMWA test suite: a Node whose host name has an underscore is still accepted.
        from tests.support.samples import node

        Schemas().check(version, "node", node(version, hostname="studio_1"))
