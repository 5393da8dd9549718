"""Translations: the served form at a lower version, the same whether kept or not, and the cache bounded without
ever serving a replaced record's text."""

from __future__ import annotations

import json

from nmos_ref.model.downgrade import Translations, downgrade
from nmos_ref.model.jsontext import compact
from nmos_ref.model.store import Registry
from tests.support.cases import UnitTest
from tests.support.official import assert_official
from tests.support.samples import Family, bump, node, sender


class TestTranslations(UnitTest):
    def setUp(self) -> None:
        self.registry = Registry()
        self.translations = Translations(size=2)
        self.registry.feed.subscribe(self.translations.changed)
        self.nodes = [node("v1.3") for _ in range(3)]
        for data in self.nodes:
            self.registry.register("node", data, "v1.3", now=0)

    def served(self, rid: str, version: str) -> str:
        record = self.registry.get("node", rid)
        assert record is not None
        return self.translations.json(record, version)

    def test_the_served_form_whether_kept_or_not(self) -> None:
        for data in self.nodes:  # the cache holds 2
            text = self.served(data["id"], "v1.0")
            assert text == compact(downgrade("node", data, "v1.3", "v1.0"))
            assert_official("v1.0", "node", json.loads(text))
            assert self.served(data["id"], "v1.0") == text
        # The most recent are kept, the oldest dropped.
        assert {rid for rid, _ in self.translations._cache} == {self.nodes[1]["id"], self.nodes[2]["id"]}

    def test_a_kept_text_leaves_with_its_record(self) -> None:
        for data in self.nodes[1:]:
            self.served(data["id"], "v1.0")
        renamed = bump(self.nodes[1], label="renamed")
        self.registry.register("node", renamed, "v1.3", now=0)
        assert {rid for rid, _ in self.translations._cache} == {self.nodes[2]["id"]}
        assert "renamed" in self.served(renamed["id"], "v1.0")  # never the replaced record's text
        self.registry.delete("node", self.nodes[2]["id"], "v1.3")
        assert {rid for rid, _ in self.translations._cache} == {renamed["id"]}

    def test_nothing_kept_for_what_loses_nothing(self) -> None:
        family = Family.build("v1.3").register(self.registry, now=0)
        plain = sender(family.device["id"], family.flow["id"], "v1.3")
        self.registry.register("sender", plain, "v1.3", now=0)
        record = self.registry.get("sender", plain["id"])
        assert record is not None
        assert self.translations.json(record, "v1.2") == record.json  # v1.3 added nothing to a Sender
        assert self.translations.data(record, "v1.2") is record.data
        assert not self.translations._cache
