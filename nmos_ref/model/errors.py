"""What the model refuses, and why. `nmos_ref.api.common` turns each into an HTTP status and the NMOS error JSON."""

from __future__ import annotations


class ModelError(Exception):
    """A request the registry refuses; the message is shown to the client as the error text."""


class InvalidResource(ModelError):
    """The resource breaks a registry rule (missing parent, type or parent changed, version went backwards...)."""


class UnknownResource(ModelError):
    """No resource of that type and id (or the Node has expired)."""


class VersionConflict(ModelError):
    """The id is held at another API version (IS-04 v1.3 "Behaviour - Registration": answer 409 with Location)."""

    def __init__(self, message: str, kind: str, rid: str, held_version: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.rid = rid
        self.held_version = held_version


class NotOwner(ModelError):
    """BCP-003-02: the resource belongs to a Node registered by another OAuth client (answer 403)."""


class BadQuery(ModelError):
    """A malformed query, or one this server refuses as too expensive (400)."""


class UnsupportedQuery(ModelError):
    """A query feature this server does not implement (501: IS-04 v1.3 "APIs - Query Parameters")."""
