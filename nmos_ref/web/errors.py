"""The NMOS error: what every refusal is, `{"code", "error", "debug"}` (IS-04 "APIs": every error carries them)."""

from __future__ import annotations

from typing import Any


class NmosError(Exception):
    """An error answer: HTTP status, the `error` text and an optional `debug` text."""

    def __init__(self, status: int, error: str, debug: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.debug = debug
        self.headers = headers or {}


def error_body(status: int, error: str, debug: str | None = None) -> dict[str, Any]:
    return {"code": status, "error": error, "debug": debug}
