"""The HTTP/1.1 edge of every API: the request class and the site that serve them, so that every answer the
process sends, including refusals made before any API code runs, is the NMOS error JSON with CORS headers.
"""

from __future__ import annotations

from twisted.web import server
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from nmos_ref.api.common import MAX_BODY


class NmosRequest(server.Request):
    """A request that stops keeping a body beyond the size cap, so a huge upload cannot fill memory or disk."""

    max_body = MAX_BODY
    body_too_large = False

    def process(self) -> None:
        # BCP-003-01: HTTPS answers carry HSTS (the site's hsts_max_age; 0 leaves it out).
        max_age = getattr(self.channel.site, "hsts_max_age", 0) if self.channel is not None else 0
        if max_age and self.isSecure():
            self.setHeader(b"strict-transport-security", b"max-age=%d" % max_age)
        super().process()

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self.body_too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large or self.content.tell() + len(data) > self.max_body:
            self.body_too_large = True
            return
        super().handleContentChunk(data)


def make_site(root: IResource, access_log: bool = False, hsts_max_age: int = 31536000) -> server.Site:
    site = server.Site(root, requestFactory=NmosRequest)
    site.hsts_max_age = hsts_max_age  # type: ignore[attr-defined]
    site.displayTracebacks = False
    if not access_log:
        site.log = _no_access_log  # type: ignore[method-assign]
    return site


def _no_access_log(request: IRequest) -> None:
    return None


