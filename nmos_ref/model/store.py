"""The registry's in-memory store: resources by type and id, their family tree, Node health and the change feed.

Rules come from IS-04 "Behaviour - Registration" (see ../shared/docs/spec-notes.md §4). Nothing here knows about HTTP:
refusals are the exceptions of `nmos_ref.model.errors`. Nothing on the write path scans the store: parents and
children are linked, the paging indexes are appended to, and garbage collection pops a queue of deadlines.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from attrs import frozen
from twisted.logger import Logger

from nmos_ref.model.errors import InvalidResource, NotOwner, UnknownResource, VersionConflict
from nmos_ref.model.jsontext import BadJSON, servable
from nmos_ref.model.tai import TAI_TEXT, TAIStamps
from nmos_ref.model.versions import ALL_VERSIONS, TYPES

log = Logger()

_CANONICAL = {version: version for version in ALL_VERSIONS}

# Resources removed per step of a large removal (a big Node's DELETE, a mass expiry), so that no reactor turn takes
# much over 10 ms of it: each removed resource costs about 20 µs with the Query API's indexes and subscriptions.
REMOVAL_STEP = 500

# The schemas' id pattern ends in "$", which (as Python and the official schemas read it) lets a final newline
# through; an id is a path segment in every API, so the store holds it to the exact form.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


class Resource:
    """One registered resource. A record is never changed once stored: an update stores a new record.

    It keeps one form of the resource, the JSON text every answer sends (`json`, encoded before the record was
    stored), and decodes `data` from it when something reads the data (filters, downgrades, indexes); the most
    recently used decodings are kept (`DECODED`), so a record read several times in a row is decoded once. The text
    is a third of the size of the decoded objects, and most records are only ever sent, never read.
    """

    __slots__ = ("kind", "id", "api_version", "created", "updated", "parent_id", "node_id", "client_id", "json")

    def __init__(self, kind: str, rid: str, api_version: str, created: int, updated: int, parent_id: str | None,
                 node_id: str, client_id: str | None, json: str) -> None:
        self.kind = kind
        self.id = rid
        self.api_version = api_version  # the Registration API version it was registered at
        self.created = created  # TAI ns, unique in the store
        self.updated = updated  # TAI ns, unique in the store
        self.parent_id = parent_id
        self.node_id = node_id  # the Node that owns it (itself for a Node)
        self.client_id = client_id  # BCP-003-02: the OAuth client that registered its Node
        self.json = json  # the data as every answer sends it

    @property
    def data(self) -> dict[str, Any]:
        """The resource exactly as registered. Shared by every reader: never mutate it."""
        return DECODED.get(self)

    def __repr__(self) -> str:
        return f"Resource({self.kind} {self.id} at {self.api_version}, updated {self.updated})"


class DecodeCache:
    """The decoded data of the most recently read records, at most `size` of them, oldest dropped first.

    Keyed by the record object (records compare by identity), so a replaced record's entry is never served for its
    successor; entries of removed records just age out."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._entries: dict[Resource, dict[str, Any]] = {}

    def get(self, record: Resource) -> dict[str, Any]:
        entries = self._entries
        data = entries.get(record)
        if data is None:
            data = json.loads(record.json)  # text this process wrote: no need for the strict decoder
            self.put(record, data)
        return data

    def put(self, record: Resource, data: dict[str, Any]) -> None:
        entries = self._entries
        entries[record] = data
        if len(entries) > self.size:
            del entries[next(iter(entries))]

    def clear(self) -> None:
        self._entries.clear()


DECODED = DecodeCache()  # one for the process: records are immutable, so every store can share it


@frozen
class Change:
    """One change of the store, with the resource before and after: created (no `pre`), updated, or removed (no
    `post`). `cause` says why: "register", "delete", "cascade" (a parent was deleted) or "expire" (garbage collection).
    """

    kind: str
    id: str
    pre: Resource | None
    post: Resource | None
    cause: str


@frozen
class RegisterOutcome:
    created: bool
    resource: Resource


class Proposal:
    """A registration the rules allow, not stored yet (`Registry.propose`): a new resource (no `existing`), a
    change of `existing` to `text`, or no change at all (`text` None). (A plain class: one is made per
    registration, and attrs' frozen classes take several times as long to make.)"""

    __slots__ = ("kind", "id", "api_version", "parent_id", "node_id", "client_id", "existing", "text")

    def __init__(self, kind: str, rid: str, api_version: str, parent_id: str | None, node_id: str,
                 client_id: str | None, existing: Resource | None, text: str | None) -> None:
        self.kind = kind
        self.id = rid
        self.api_version = api_version
        self.parent_id = parent_id
        self.node_id = node_id
        self.client_id = client_id  # the owner the record keeps
        self.existing = existing
        self.text = text

    def record(self, stamp: int) -> Resource:
        """The record to store, updated at `stamp` (and created then, if it is new)."""
        assert self.text is not None
        created = self.existing.created if self.existing is not None else stamp
        return Resource(self.kind, self.id, self.api_version, created, stamp, self.parent_id, self.node_id,
                        self.client_id, self.text)


class ChangeFeed:
    """Passes each batch of changes (all the changes of one request or one expiry) to every subscriber."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[Sequence[Change]], None]] = []

    def subscribe(self, callback: Callable[[Sequence[Change]], None]) -> Callable[[], None]:
        """Start passing batches to `callback`; returns the function that stops it."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def publish(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        for callback in list(self._subscribers):
            try:
                callback(changes)
            except Exception:
                # One broken consumer must not stop the others or undo the change.
                log.failure("A change feed subscriber failed")


class TimeIndex:
    """The resources of one type in the order of one of their stamps, for paging.

    Stamps only grow, so adding is an append; a replaced or removed entry is left in place and skipped when read
    (it no longer matches the live record), and the lists are compacted once most entries are dead.
    """

    def __init__(self, lookup: Callable[[str], Resource | None], attribute: str) -> None:
        self._lookup = lookup
        self._attribute = attribute
        self._stamps: list[int] = []
        self._ids: list[str] = []
        self._dead = 0

    def __len__(self) -> int:
        return len(self._stamps) - self._dead

    def append(self, stamp: int, rid: str) -> None:
        self._stamps.append(stamp)
        self._ids.append(rid)

    def discard(self) -> None:
        """Note that one entry went dead."""
        self._dead += 1
        if self._dead > 64 and self._dead * 2 > len(self._stamps):
            self._compact()

    def _live(self, i: int) -> Resource | None:
        resource = self._lookup(self._ids[i])
        if resource is not None and getattr(resource, self._attribute) == self._stamps[i]:
            return resource
        return None

    def _compact(self) -> None:
        keep = [i for i in range(len(self._stamps)) if self._live(i) is not None]
        self._stamps = [self._stamps[i] for i in keep]
        self._ids = [self._ids[i] for i in keep]
        self._dead = 0

    def _bounds(self, since: int | None, until: int | None) -> tuple[int, int]:
        low = bisect_right(self._stamps, since) if since is not None else 0
        high = bisect_right(self._stamps, until) if until is not None else len(self._stamps)
        return low, high

    def newest_first(self, since: int | None = None, until: int | None = None) -> Iterator[Resource]:
        """Live resources with since < stamp <= until, newest first."""
        low, high = self._bounds(since, until)
        for i in range(high - 1, low - 1, -1):
            resource = self._live(i)
            if resource is not None:
                yield resource

    def oldest_first(self, since: int | None = None, until: int | None = None) -> Iterator[Resource]:
        """Live resources with since < stamp <= until, oldest first."""
        low, high = self._bounds(since, until)
        for i in range(low, high):
            resource = self._live(i)
            if resource is not None:
                yield resource


def parent_of(kind: str, data: dict[str, Any]) -> tuple[str | None, str | None]:
    """The parent's id and type: device→node; source, sender, receiver→device; flow→device from v1.1, →source for
    v1.0 flows, which have no device_id. `sender.flow_id` and `parents` are deliberately not links (nmos-testing
    IS-04-02 test_11 registers a Sender whose flow does not exist)."""
    if kind == "node":
        return None, None
    if kind == "device":
        return data.get("node_id"), "node"
    if kind == "flow" and "device_id" not in data:
        return data.get("source_id"), "source"
    return data.get("device_id"), "device"


def _servable(kind: str, rid: str, data: dict[str, Any]) -> str:
    """The JSON every answer will send for `data`, made before anything is stored: what cannot be served is never
    kept (a lone surrogate or a NaN kept once would break every later answer that holds it)."""
    try:
        return servable(data)
    except BadJSON as exc:
        raise InvalidResource(f"{kind} {rid} cannot be stored: {exc}") from None


def _version_of(kind: str, data: dict[str, Any]) -> tuple[int, int]:
    text = data.get("version")
    match = TAI_TEXT.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        shown = repr(text)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise InvalidResource(f"{kind} version must be a TAI timestamp <seconds>:<nanoseconds> (at most 20 and 9 "
                              f"digits), not {shown}")
    return int(match.group(1)), int(match.group(2))


class Registry:
    """Every registered resource, the health of every Node, and the feed of their changes."""

    def __init__(self, expiry: float = 12.0) -> None:
        self.tai = TAIStamps()
        self.expiry = expiry
        self.feed = ChangeFeed()
        # One dict per type (ids are unique across types, so `find` looks in each): a second dict by id alone
        # would cost as much memory as the Resource objects themselves.
        self._by_kind: dict[str, dict[str, Resource]] = {kind: {} for kind in TYPES}
        self._stores = tuple(self._by_kind.values())
        # Parent id -> ids of its children, for parents that have any. A list: a child is added once, and only a
        # child deleted on its own is looked for (a set of 8 ids costs 728 bytes, a list 136).
        self._children: dict[str, list[str]] = {}
        self._updated = {kind: TimeIndex(self._by_kind[kind].get, "updated") for kind in TYPES}
        self._created = {kind: TimeIndex(self._by_kind[kind].get, "created") for kind in TYPES}
        self._last_seen: dict[str, float] = {}  # Node id -> Unix time of its registration or last heartbeat
        self._deadlines: deque[tuple[float, str]] = deque()  # (expiry time, Node id), in time order
        self._expiring: deque[Removal] = deque()  # expired Nodes not yet wholly removed, oldest first
        self.heartbeats = 0  # answered, since start (for /metrics)

    # Reading

    def find(self, rid: str) -> Resource | None:
        for records in self._stores:
            record = records.get(rid)
            if record is not None:
                return record
        return None

    def get(self, kind: str, rid: str) -> Resource | None:
        return self._by_kind[kind].get(rid)

    def resources(self, kind: str) -> Iterator[Resource]:
        """Every resource of one type, oldest registration first."""
        return iter(self._by_kind[kind].values())

    def count(self, kind: str) -> int:
        return len(self._by_kind[kind])

    def index(self, kind: str, order: str = "update") -> TimeIndex:
        """The paging index of one type: order "update" or "create"."""
        return (self._updated if order == "update" else self._created)[kind]

    def children(self, rid: str) -> Sequence[str]:
        """The ids of the resources whose parent is `rid`, oldest first (read it, never change it)."""
        return self._children.get(rid, ())

    def last_seen(self, node_id: str) -> float | None:
        return self._last_seen.get(node_id)

    # Writing

    def register(self, kind: str, data: dict[str, Any], api_version: str, client_id: str | None = None, *,
                 now: float) -> RegisterOutcome:
        """Create or update a resource at Unix time `now`. `data` must already be valid for `api_version` and is
        kept as it is."""
        proposal = self.propose(kind, data, api_version, client_id)
        existing = proposal.existing
        if proposal.text is None:
            assert existing is not None
            # An identical re-POST changes nothing (nmos-cpp does the same); it still counts as a sign of life.
            if kind == "node":
                self._touch(existing.id, now)
            return RegisterOutcome(False, existing)
        record = proposal.record(self.tai.stamp(now))
        DECODED.put(record, data)  # the change feed's readers (indexes, filtered subscriptions) read it next
        change = self._store(record, existing)
        if kind == "node":
            self._touch(record.id, now)
        self.feed.publish([change])
        return RegisterOutcome(existing is None, record)

    def propose(self, kind: str, data: dict[str, Any], api_version: str,
                client_id: str | None = None) -> Proposal:
        """What registering `data` would store, by the registry's rules (which raise), without storing it."""
        rid = data["id"]
        api_version = _CANONICAL.get(api_version, api_version)  # the same string object in every record
        if not isinstance(rid, str) or _UUID.fullmatch(rid) is None:
            raise InvalidResource(f"{kind} id must be a lower-case UUID, not {rid!r}")
        existing = self.find(rid)
        if existing is not None:
            rid = existing.id  # one copy of each id: the stored record's
            if existing.kind != kind:
                # IS-04 v1.3 "Behaviour - Registration": an id MUST NOT be reused for a resource of another type.
                raise InvalidResource(f"id {rid} is already registered as a {existing.kind}, not a {kind}")
            if existing.api_version != api_version:
                raise VersionConflict(f"{kind} {rid} is registered at {existing.api_version}; delete it there first",
                                      kind, rid, existing.api_version)
        parent_id, parent_kind = parent_of(kind, data)
        node_id = rid
        if parent_kind is not None:
            parent = self.find(parent_id) if isinstance(parent_id, str) else None
            if parent is None or parent.kind != parent_kind:
                raise InvalidResource(f"{kind} {rid} names {parent_kind} {parent_id} as its parent, which is not "
                                      f"registered")
            parent_id, node_id = parent.id, parent.node_id  # the parent's own strings: one copy of each id
        self._check_owner(node_id if existing is None else existing.node_id, client_id)
        if existing is None:
            owner = self._by_kind["node"][node_id].client_id if node_id != rid else client_id
            _version_of(kind, data)
            return Proposal(kind, rid, api_version, parent_id, node_id, owner, None, _servable(kind, rid, data))
        text = _servable(kind, rid, data)
        if text == existing.json or data == existing.data:  # the same resource (its members in another order)
            return Proposal(kind, rid, existing.api_version, parent_id, existing.node_id, existing.client_id,
                            existing, None)
        if parent_id != existing.parent_id:
            raise InvalidResource(f"the parent of {kind} {rid} cannot change (registered with {existing.parent_id}, "
                                  f"now {parent_id})")
        held = existing.data
        if _version_of(kind, data) <= _version_of(kind, held):
            # IS-04 v1.3 "Behaviour - Registration": the registry MAY reject an update whose version is earlier;
            # a change without a newer version is refused too, since id + version names one variant.
            raise InvalidResource(f"{kind} {rid} changed but its version {data.get('version')} is not later than "
                                  f"the registered {held.get('version')}")
        return Proposal(kind, rid, existing.api_version, parent_id, existing.node_id, existing.client_id, existing,
                        text)

    def _store(self, record: Resource, existing: Resource | None) -> Change:
        """Put `record` in place of `existing` (or as a new resource); the change."""
        kind, rid = record.kind, record.id
        self._by_kind[kind][rid] = record
        if existing is None:
            self._created[kind].append(record.created, rid)
            self._updated[kind].append(record.updated, rid)
            parent_id = record.parent_id
            if parent_id is not None:
                siblings = self._children.get(parent_id)
                if siblings is None:
                    self._children[parent_id] = [rid]
                else:
                    siblings.append(rid)
        else:
            self._updated[kind].discard()
            self._updated[kind].append(record.updated, rid)
        return Change(kind, rid, existing, record, "register")

    def _check_owner(self, node_id: str, client_id: str | None) -> None:
        """BCP-003-02: "the Registration API SHOULD reject ... requests to modify or delete resources ... from a
        client other than the one which registered the Node" (the client_id or azp of its first token)."""
        node = self.find(node_id)
        if node is not None and node.client_id is not None and client_id != node.client_id:
            raise NotOwner(f"node {node_id} was registered by another client")

    def delete(self, kind: str, rid: str, api_version: str, client_id: str | None = None) -> list[Change]:
        """Remove a resource and, at once, every resource below it (IS-04: a registry MUST clean up children)."""
        return self.removal(kind, rid, api_version, client_id).step(None)

    def removal(self, kind: str, rid: str, api_version: str, client_id: str | None = None) -> Removal:
        """The deletion of a resource and everything below it, checked (it exists, at `api_version`, owned by
        `client_id`) and not begun: the caller takes its steps (`Removal.step`)."""
        return Removal(self, self.deletable(kind, rid, api_version, client_id), "delete")

    def deletable(self, kind: str, rid: str, api_version: str, client_id: str | None = None) -> Resource:
        """The resource `delete` would remove, by the registry's rules (which raise), without removing it."""
        existing = self._by_kind[kind].get(rid)
        if existing is None:
            raise UnknownResource(f"no {kind} {rid} is registered")
        if existing.api_version != api_version:
            raise VersionConflict(f"{kind} {rid} is registered at {existing.api_version}", kind, rid,
                                  existing.api_version)
        self._check_owner(existing.node_id, client_id)
        return existing

    def _remove(self, records: list[Resource], root: Resource, cause: str) -> list[Change]:
        """Remove `records`, which hold the descendants of each of them (children before parents); the root's change
        says `cause`, the others "cascade"."""
        changes = []
        gone: dict[str, list[str]] = {}  # parent id -> its children removed here, when the parent stays
        for record in records:
            rid = record.id
            del self._by_kind[record.kind][rid]
            self._created[record.kind].discard()
            self._updated[record.kind].discard()
            self._last_seen.pop(rid, None)
            self._children.pop(rid, None)
            parent_id = record.parent_id
            if parent_id is not None and parent_id in self._children:
                gone.setdefault(parent_id, []).append(rid)
            changes.append(Change(record.kind, rid, record, None, cause if record is root else "cascade"))
        for parent_id, removed in gone.items():
            siblings = self._children.get(parent_id)
            if siblings is None:  # the parent went too
                continue
            if len(removed) == 1:
                siblings.remove(removed[0])
            else:
                drop = set(removed)
                siblings[:] = [child for child in siblings if child not in drop]
            if not siblings:
                del self._children[parent_id]
        return changes

    def _remove_tree(self, root: Resource, cause: str) -> list[Change]:
        """Remove `root` and everything below it at once."""
        return self._remove(self.subtree(root), root, cause)

    def subtree(self, root: Resource, limit: int | None = None) -> list[Resource]:
        """The first `limit` (or all) of `root` and its descendants in post-order: each after its descendants
        (leaves first), so any prefix can be removed and leave a whole tree."""
        order: list[Resource] = []
        stack: list[tuple[Resource, Iterator[str]]] = [(root, iter(self._children.get(root.id, ())))]
        while stack:
            record, pending = stack[-1]
            for child_id in pending:
                child = self.find(child_id)
                if child is not None:
                    stack.append((child, iter(self._children.get(child_id, ()))))
                    break
            else:
                stack.pop()
                order.append(record)
                if limit is not None and len(order) >= limit:
                    break
        return order

    # Replication (nmos_ref.cluster): records another store decided, applied with their own stamps

    def apply(self, records: Sequence[Resource], removed: Sequence[str]) -> list[Change]:
        """Remove the resources whose ids are `removed` (each with its descendants) and store `records` (each new
        or replacing the resource of its id), as decided elsewhere (by the etcd cluster) and stamped there; the
        changes, published as one batch. A record equal to the stored one changes nothing. Nodes stored here have
        no deadline: whoever decides also expires them."""
        return self.replication(records, removed).step(None)

    def replication(self, records: Sequence[Resource], removed: Sequence[str]) -> Replication:
        """What `apply` does, not begun: the caller takes its steps (`Replication.step`), so a big removal can be
        spread over several turns of the reactor like a big `removal`."""
        held = set(removed)
        find = self.find
        roots: deque[Removal] = deque()  # the removed resources whose parent stays (the others go with it)
        for rid in removed:
            record = find(rid)
            if record is not None and (record.parent_id not in held or find(record.parent_id) is None):
                roots.append(Removal(self, record, "delete"))
        return Replication(self, records, roots)

    def _put(self, records: Sequence[Resource]) -> list[Change]:
        """Store `records` decided elsewhere (`apply`); the changes, not published."""
        changes: list[Change] = []
        for record in records:
            existing = self.find(record.id)
            if existing is not None:
                if existing.updated == record.updated and existing.json == record.json:
                    continue
                if existing.kind != record.kind or existing.parent_id != record.parent_id:
                    # not an update: another resource
                    changes.extend(self._remove_tree(existing, "delete"))
                    existing = None
            changes.append(self._store(record, existing))
        return changes

    # Health and garbage collection

    def heartbeat(self, node_id: str, api_version: str, client_id: str | None = None, *, now: float) -> float:
        """Refresh a Node's health at Unix time `now`, which is returned. Never creates a Node (IS-04: 404 for an
        unknown one)."""
        node = self.heartbeat_target(node_id, api_version, client_id)
        self.heartbeats += 1
        return self._touch(node.id, now)  # the stored id: the queue keeps no copy of the one in the URL

    def heartbeat_target(self, node_id: str, api_version: str, client_id: str | None = None) -> Resource:
        """The Node a heartbeat would refresh, by the registry's rules (which raise), without refreshing it."""
        node = self._node(node_id, api_version)
        self._check_owner(node_id, client_id)
        return node

    def health(self, node_id: str, api_version: str) -> float:
        """When a Node was last seen, without refreshing it."""
        self._node(node_id, api_version)
        return self._last_seen[node_id]

    def _node(self, node_id: str, api_version: str) -> Resource:
        node = self._by_kind["node"].get(node_id)
        if node is None:
            raise UnknownResource(f"no node {node_id} is registered (never registered, deleted or expired)")
        if node.api_version != api_version:
            raise VersionConflict(f"node {node_id} is registered at {node.api_version}", "node", node_id,
                                  node.api_version)
        return node

    def _touch(self, node_id: str, now: float) -> float:
        self._last_seen[node_id] = now
        self._deadlines.append((now + self.expiry, node_id))
        return now

    def collect_garbage(self, now: float, limit: int | None = None) -> list[Change]:
        """Remove every Node not seen for `expiry` seconds before Unix time `now`, with all its resources; the changes
        made. With a `limit`, at most that many resources are removed (leaves first, so the store stays a whole
        tree) and the rest wait for the next call: `collecting` says whether some do."""
        deadlines = self._deadlines
        if deadlines and deadlines[-1][0] > now + self.expiry:
            # The wall clock went backwards: count every Node as seen now rather than keep it for ever.
            self._deadlines = deadlines = deque((now + self.expiry, node) for node in self._last_seen)
            self._last_seen = dict.fromkeys(self._last_seen, now)
        changes: list[Change] = []
        expiring = self._expiring
        while True:
            changes += take_steps(expiring, None if limit is None else limit - len(changes))
            if expiring or not deadlines or deadlines[0][0] > now or (limit is not None and len(changes) >= limit):
                break
            _, node_id = deadlines.popleft()
            seen = self._last_seen.get(node_id)
            if seen is None or seen + self.expiry > now:
                continue  # deleted since, or heard from again
            node = self._by_kind["node"][node_id]
            log.debug("Node {node_id} expired: no heartbeat for {age:.1f} s (limit {expiry} s)", node_id=node_id,
                      age=now - seen, expiry=self.expiry)
            expiring.append(Removal(self, node, "expire"))
        self.feed.publish(changes)
        return changes

    @property
    def collecting(self) -> bool:
        """Whether expired Nodes are still being removed (`collect_garbage` with a `limit`)."""
        return bool(self._expiring)

    # After a stall (nmos_ref.wiring.registry.ExpirySweep)

    def postpone_expiry(self, seconds: float, now: float) -> None:
        """Count every Node as seen `seconds` later, but not after Unix time `now`: for that long the registry could
        not read heartbeats (its reactor or its host stalled), so their absence says nothing about the Nodes."""
        if seconds <= 0:
            return
        last_seen = self._last_seen
        for node_id, seen in last_seen.items():
            last_seen[node_id] = min(seen + seconds, now)
        self._deadlines = deque(sorted((seen + self.expiry, node_id) for node_id, seen in last_seen.items()))


class Removal:
    """The removal of one resource and everything below it, taken in steps of at most a given number of resources,
    leaves first: after every step the store is a whole tree (what remains of this one included), so requests served
    between two steps see a consistent registry. What is registered below the resource meanwhile goes too. Done
    once the resource itself has gone (by this removal or another)."""

    def __init__(self, registry: Registry, root: Resource, cause: str) -> None:
        self.registry = registry
        self.kind, self.id = root.kind, root.id
        self.cause = cause  # "delete" or "expire": the root's change says it, the others "cascade"

    @property
    def done(self) -> bool:
        return self.registry.get(self.kind, self.id) is None

    def step(self, limit: int | None, *, publish: bool = True) -> list[Change]:
        """Remove up to `limit` (None: all) of what remains, publish the changes (unless told not to) and return
        them."""
        registry = self.registry
        root = registry.get(self.kind, self.id)  # as it is now: it may have been updated since the last step
        if root is None:
            return []
        changes = registry._remove(registry.subtree(root, limit), root, self.cause)
        if publish:
            registry.feed.publish(changes)
        return changes


def take_steps(removals: deque[Removal], limit: int | None) -> list[Change]:
    """Remove up to `limit` (None: all) resources, from the first of `removals` on in order, dropping each removal
    once done; the changes, not published."""
    changes: list[Change] = []
    while removals and (limit is None or len(changes) < limit):
        removal = removals[0]
        changes += removal.step(None if limit is None else limit - len(changes), publish=False)
        if removal.done:
            removals.popleft()
    return changes


class Replication:
    """Changes decided elsewhere (`Registry.replication`) applied in steps: the removals first, at most a given
    number of resources a step and leaves first (`Removal`), so the store is a whole tree after every step; then,
    in the step that ends the removals, the records. Each step's changes are published as one batch."""

    def __init__(self, registry: Registry, records: Sequence[Resource], removals: deque[Removal]) -> None:
        self.registry = registry
        self.records = records
        self.removals = removals  # those not done yet
        self.done = False

    def step(self, limit: int | None) -> list[Change]:
        """Remove up to `limit` (None: all) of what remains to remove, store the records once nothing does, publish
        the changes and return them."""
        changes = take_steps(self.removals, limit) if self.removals else []
        if not self.removals and not self.done:
            self.done = True
            changes += self.registry._put(self.records)
        self.registry.feed.publish(changes)
        return changes
