"""api.common: the one place answers are shaped."""

from __future__ import annotations

from twisted.web.test.requesthelper import DummyRequest

from nmos_ref.web.responses import json_response
from tests.support.cases import UnitTest


class TestJsonResponse(UnitTest):
    def test_reason_phrases_twisted_lacks(self) -> None:
        request = DummyRequest([b""])
        json_response(request, 426, {"code": 426, "error": "Upgrade Required", "debug": None})
        assert (request.responseCode, request.responseMessage) == (426, b"Upgrade Required")
        assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]

    def test_known_reason_phrases_are_twisteds(self) -> None:
        request = DummyRequest([b""])
        json_response(request, 404, {})
        assert request.responseCode == 404 and request.responseMessage in (None, b"Not Found")
