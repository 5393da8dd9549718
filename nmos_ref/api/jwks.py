"""The Node's public key set, served for its private_key_jwt client assertions.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.resource import Resource

from nmos_ref.auth.oauth_client import OAuthClient


class JWKSResource(Resource):
    """The Node's public keys (RFC 7517 JWK Set) at `/x-authorization/jwks`, for an authorization server checking
    the Node's `private_key_jwt` client assertions (RFC 7523); public, so never behind the token check."""

    isLeaf = True

    def __init__(self, oauth: OAuthClient) -> None:
        super().__init__()
        self.oauth = oauth

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        return json.dumps(self.oauth.jwks()).encode("utf-8")
