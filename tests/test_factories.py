"""The test factories make resources the official schemas accept, at every version."""

from __future__ import annotations

import pytest

from factories import VERSIONS, family, sender
from official import assert_official


@pytest.mark.parametrize("version", VERSIONS)
def test_every_family_member_is_valid(version: str) -> None:
    for kind, data in family(version):
        assert_official(version, kind, data)
        assert_official(version, "registrationapi-resource-post-request", {"type": kind, "data": data})


@pytest.mark.parametrize("version", VERSIONS[1:])
def test_sender_without_flow(version: str) -> None:
    assert_official(version, "sender", sender(family(version)[1][1]["id"], None, version))
