"""The registration client: keeps the Node registered with the best Registration API it can reach.

IS-04 "Behaviour - Registration" (v1.3), as ../shared/docs/spec-notes.md §6 sums it up:

- POST the Node, heartbeat, then its devices, sources, flows, senders and receivers, parents first; heartbeat
  `POST /health/nodes/{id}` every 5 s with no body, on a fixed-rate timer that other requests never delay.
- 200 on the first registration of the Node: "a previous record of the Node can be assumed to still exist", so DELETE
  it and register again. 409 (v1.3): "The Node MUST fully unregister from this registry using its registered API
  version before proceeding to re-register". 404 on a heartbeat: "re-register each of its resources ... in order".
  400 and other 4xx: "The same request MUST NOT be re-attempted without corrective action".
- 5xx, no connection or a timeout: "identify another Registration API to use from their discovered list. The first
  interaction with a new Registration API in this case SHOULD be a heartbeat"; only its 404 means registering again.
  "If a 5xx error is encountered when interacting with all discoverable Registration APIs, clients SHOULD implement
  an exponential backoff algorithm".
- Controlled unregistration: DELETE children before parents, the Node last.

Registry choice (IS-04 "Upgrade Path": "The API version SHOULD be selected before considering the Registration
API's configured priority"; "Discovery - Registered Operation": lowest priority first, at random among equals):
unsuitable ones (protocol, version, authorization) are filtered out. A ranking is worked through in order; once it
is exhausted, registries not tried since (found meanwhile) are ranked, and only when every known one has failed
does the client back off.

The state lives in `RegistrationClient`. Each switch of registry starts a new *epoch*: answers to requests of an
older epoch are ignored and its requests cancelled, so a late reply from a registry left behind can never change
what the client believes. `_held` is what the registry (cluster) holds for the Node: resource -> `version`. A
"sync" compares it with what the Node shows at the registration version and sends the difference, so the first
registration, re-registration after a 404, and every later change are the same code path.

Why one module of ~600 lines: it is one state machine (choose -> heartbeat -> sync -> fail over -> back off) whose
methods share the epoch, `_held` and the request wrapper; cutting it would spread one set of invariants over
several files. What is pure and separable already lives apart: the registry ranking in `nmos_ref.node.registries`,
the backoff in `nmos_ref.web.backoff`, the HTTP exchange in `nmos_ref.web.client`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any

from attrs import evolve
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from nmos_ref.model.store import parent_of
from nmos_ref.model.versions import PLURALS, TYPES
from nmos_ref.node.registries import Candidate, Choice, Rejection, rank
from nmos_ref.node.state import NodeModel, ResourceAtVersion
from nmos_ref.web.backoff import Backoff
from nmos_ref.web.client import Reply, Unreachable, exchange

log = Logger()

HEARTBEAT_INTERVAL = 5.0  # IS-04 "Behaviour - Registration": "every 5 seconds by default"
# Below the heartbeat interval, so a heartbeat never overlaps the next, and a failed registry is left (and the next
# one heartbeated) well inside the registry's 12 s garbage collection window. IS-04 advises basing the timeout of
# heartbeats on the heartbeat interval.
REQUEST_TIMEOUT = 4.0

_LOCATION_VERSION = re.compile(r"/x-nmos/registration/(v[0-9]+\.[0-9]+)/")


class _Switched(Exception):
    """The client moved on to another registry (or is stopping) while a request was out."""


class _Failed(Exception):
    """The registry failed (5xx, no connection, timeout): time to try the next one."""


_CHILDREN_FIRST = {kind: position for position, kind in enumerate(reversed(TYPES))}


class RegistrationClient(Service):
    """Registers one Node's resources with one registry at a time, and heartbeats it."""

    def __init__(self, model: NodeModel, http: Any, clock: IReactorTime,
                 candidates: Callable[[], Deferred[list[Candidate]]], *, protocol: str = "http",
                 authorization: bool = False, tokens: Any = None, interval: float = HEARTBEAT_INTERVAL,
                 timeout: float = REQUEST_TIMEOUT,
                 backoff: Backoff = Backoff(), rng: random.Random | None = None) -> None:
        self.model = model
        self.http = http
        self.clock = clock
        self.candidates = candidates
        self.protocol = protocol
        self.authorization = authorization
        self.tokens = tokens  # the OAuth client (token(), rejected(token)) when the Node uses authorization
        self.interval = interval
        self.timeout = timeout
        self.backoff = backoff
        self.rng = rng or random.Random()
        self.state = "idle"  # idle, choosing, registering, registered, refused, backoff, no registry, stopped
        self.current: Choice | None = None
        self._epoch = 0
        self._round: list[Choice] = []  # the ranking being worked through
        self._tried: set[str] = set()  # registries failed or unusable since the last backoff or success
        self._confirming = False  # the first heartbeat to a registry taken over from another is out
        self._held: dict[tuple[str, str], str] = {}  # (kind, id) -> version the registry holds
        self._held_at: str | None = None  # the API version they were registered at
        self._refused: dict[tuple[str, str], str] = {}  # (kind, id) -> version refused with a 4xx
        self._loop: LoopingCall | None = None
        self._beating = False
        self._syncing = False
        self._dirty = False
        self._attempt = 0
        self._retry: IDelayedCall | None = None
        self._requests: set[Deferred[Any]] = set()
        self._waiters: list[Deferred[None]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._watchers: list[Callable[[str], None]] = []
        self._changed_while_choosing = False
        self.failovers = 0  # registries given up for the next one (for /metrics)

    # --- the service

    def startService(self) -> None:
        super().startService()
        self._unsubscribe = self.model.subscribe(self._model_changed)
        self._choose()

    def stopService(self) -> Deferred[None]:
        """Controlled unregistration: stop heartbeating, then DELETE what the registry holds, children first."""
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._stop_heartbeats()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        choice, held = self.current, dict(self._held)
        self._new_epoch()
        self.current = None
        self._set_state("stopped")
        if choice is None or not held:
            return succeed(None)
        return ensureDeferred(self._unregister(choice, held))

    async def _unregister(self, choice: Choice, held: dict[tuple[str, str], str]) -> None:
        version = self._held_at or choice.version
        log.info("Unregistering the Node from {registry}: deleting {count} resources, children first",
                 registry=choice.candidate.url, count=len(held))
        for kind, rid in sorted(held, key=lambda key: _CHILDREN_FIRST[key[0]]):
            url = choice.candidate.api(version, f"resource/{PLURALS[kind]}/{rid}")
            try:
                reply = await self._send("DELETE", url)
            except Unreachable as exc:
                log.warn("Unregistering stopped: DELETE {kind} {id} failed ({reason}); the registry will expire "
                         "the rest", kind=kind, id=rid, reason=str(exc))
                return
            if reply.code >= 500:
                log.warn("Unregistering stopped: DELETE {kind} {id} answered {code}; the registry will expire "
                         "the rest", kind=kind, id=rid, code=reply.code)
                return
            if reply.code not in (204, 404):
                log.warn("DELETE {kind} {id} answered {code}: {error}", kind=kind, id=rid, code=reply.code,
                         error=reply.error_text())
        self._held.clear()
        log.info("Unregistered the Node from {registry}", registry=choice.candidate.url)

    # --- what tests and operators can wait for

    def synced(self) -> Deferred[None]:
        """Fires once the registry holds every resource the Node shows, as it is now."""
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        self._notify()
        return waiter

    def _in_sync(self) -> bool:
        choice = self.current
        if choice is None or self._confirming or self._syncing or self._dirty or not self.running:
            return False
        for view in self.model.registrable(choice.version):
            version = view.data["version"]  # type: ignore[index]
            key = (view.kind, view.id)
            if self._held.get(key) != version and self._refused.get(key) != version:
                return False
        return True

    def _notify(self) -> None:
        if self._waiters and self._in_sync():
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def watch(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call `listener(state)` on every change of state; returns the function that stops it."""
        self._watchers.append(listener)
        return lambda: self._watchers.remove(listener) if listener in self._watchers else None

    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.debug("Registration state: {old} -> {new}", old=self.state, new=state)
            self.state = state
            for listener in list(self._watchers):
                try:
                    listener(state)
                except Exception:
                    log.failure("A watcher of the registration state failed on {state}", state=state)

    def registries_changed(self, available: Sequence[Candidate]) -> None:
        """DNS-SD found or lost registries: `available` are those now known. Ones gone are not failed over to; and
        a Node without a registry (none known, or backing off) tries the new ones at once."""
        urls = {candidate.url for candidate in available}
        self._round = [choice for choice in self._round if choice.candidate.url in urls]
        if not self.running:
            return
        if self.state == "choosing":
            self._changed_while_choosing = True
        elif self.state in ("no registry", "backoff") and available:
            if self._retry is not None and self._retry.active():
                self._retry.cancel()
            self._choose()

    def retry_now(self) -> None:
        """Something that stopped every registry from being usable is fixed (an access token can be had again):
        a client backing off tries at once instead of waiting out the delay."""
        if self.running and self.state == "backoff":
            log.info("Trying the registries again now")
            if self._retry is not None and self._retry.active():
                self._retry.cancel()
            self._choose()

    # --- choosing a registry

    def _new_epoch(self) -> int:
        """Forget the registry in use: cancel what is still out to it and ignore its late answers."""
        self._epoch += 1
        self._confirming = False
        self._beating = False
        for request in list(self._requests):
            request.cancel()
        return self._epoch

    def _choose(self, fresh: bool = True) -> None:
        """Rank the registries: all of them (`fresh`, at start and after a backoff), or only those not yet tried
        since the last backoff (every registry of the ranking failed: new ones may have appeared meanwhile)."""
        self._retry = None
        epoch = self._new_epoch()
        self.current = None
        if fresh:
            self._tried.clear()
        self._set_state("choosing")
        self._changed_while_choosing = False
        ensureDeferred(self._choose_from_candidates(epoch, fresh)).addErrback(
            lambda failure: log.failure("Choosing a registry failed", failure))

    async def _choose_from_candidates(self, epoch: int, fresh: bool) -> None:
        every = list(await self.candidates())
        if epoch != self._epoch:
            return
        if not every:
            if self._changed_while_choosing:
                self._choose()
                return
            self._set_state("no registry")
            log.info("No Registration API is configured or discovered yet: the Node serves its Node API and waits "
                     "for one")
            return
        candidates = [candidate for candidate in every if candidate.url not in self._tried]
        probes = [ensureDeferred(self._probe(candidate)) for candidate in candidates]
        results = await DeferredList(probes, consumeErrors=True)
        if epoch != self._epoch:
            return
        known: list[Candidate] = []
        unreachable: list[Rejection] = []
        for candidate, (ok, result) in zip(candidates, results):
            if ok and isinstance(result, Candidate):
                known.append(result)
            else:
                unreachable.append(Rejection(candidate, result if ok else str(result.value)))
        choices, rejected = rank(known, self.model.versions, self.protocol, self.authorization, self.rng)
        for rejection in unreachable + rejected:
            self._tried.add(rejection.candidate.url)
            log.info("Not using registry {registry}: {reason}", registry=rejection.candidate.url,
                     reason=rejection.reason)
        if choices:
            log.info("Registries to use, best first: {choices}", choices="; ".join(
                f"{choice} (priority {choice.candidate.priority})" for choice in choices))
        self._round = choices
        if choices:
            self._next()
        elif self._changed_while_choosing:
            self._choose(fresh=fresh)
        else:
            self._back_off()

    async def _probe(self, candidate: Candidate) -> Candidate | str:
        """The candidate with its versions (asked of the registry if not known), or why it cannot be used."""
        if candidate.versions is not None:
            return candidate
        url = f"{candidate.url}/x-nmos/registration/"
        try:
            reply = await self._track(self._request("GET", url))
        except Unreachable as exc:
            return f"GET {url} failed: {exc}"
        try:
            listing = reply.json() if reply.code == 200 else None
        except ValueError:
            listing = None
        if not isinstance(listing, list):
            return f"GET {url} answered {reply.code} without a list of versions"
        versions = tuple(item.rstrip("/") for item in listing if isinstance(item, str)
                         and re.fullmatch(r"v[0-9]+\.[0-9]+/?", item))
        return evolve(candidate, versions=versions)

    def _next(self) -> None:
        """Move on to the next registry of this round; back off once every one of them has failed."""
        self._stop_heartbeats()
        if not self._round:
            self._choose(fresh=False)  # IS-04: back off only once *every* known registry has failed
            return
        epoch = self._new_epoch()
        choice = self.current = self._round.pop(0)
        self._set_state("registering")
        if self._held:
            # IS-04: the first interaction with a new Registration API SHOULD be a heartbeat.
            log.info("Moving to registry {choice}: heartbeating first, to see whether it knows the Node",
                     choice=choice)
            self._confirming = True
            self._start(self._beat(epoch, confirming=True))
        else:
            log.info("Registering with registry {choice}", choice=choice)
            self._kick()

    def _back_off(self) -> None:
        self.current = None
        delay = self.backoff.delay(self._attempt, self.rng)
        self._attempt += 1
        log.warn("No registry could be used; trying again in {delay:.1f} s (attempt {attempt})", delay=delay,
                 attempt=self._attempt)
        # The retry is in place before watchers hear of the new state: one that stops the client at once (as a
        # shutdown may) cancels it, instead of leaving it to fire on a stopped client.
        self._retry = self.clock.callLater(delay, self._choose)
        self._set_state("backoff")

    def _failed(self, epoch: int, reason: str) -> None:
        if epoch != self._epoch or not self.running:
            return
        log.warn("Registry {choice} failed: {reason}; moving to the next one", choice=self.current, reason=reason)
        self.failovers += 1
        if self.current is not None:
            self._tried.add(self.current.candidate.url)
        self._next()

    def _succeeded(self) -> None:
        """The registry in use works: it holds the Node's resources, or answered a heartbeat."""
        self._attempt = 0
        self._tried.clear()  # a registry works: should it fail later, every other one is worth trying again

    # --- requests

    def _track(self, request: Deferred[Reply]) -> Deferred[Reply]:
        self._requests.add(request)

        def forget(result: Any) -> Any:
            self._requests.discard(request)
            return result

        return request.addBoth(forget)

    def _request(self, method: str, url: str, body: Any = None) -> Deferred[Reply]:
        return Deferred.fromCoroutine(self._send(method, url, body))

    async def _send(self, method: str, url: str, body: Any = None) -> Reply:
        """One request, with the Node's bearer token when it uses authorization (IS-10). A 401 means the token was
        not accepted (expired early, revoked, keys rotated): it is dropped and the request sent once more with a
        new one. No token to be had counts as an unreachable registry (Unreachable), so failover and backoff
        apply."""
        if self.tokens is None:
            return await exchange(self.http, self.clock, method, url, timeout=self.timeout, json_body=body)
        token = await self._token()
        reply = await exchange(self.http, self.clock, method, url, timeout=self.timeout, json_body=body,
                               headers={"Authorization": f"Bearer {token}"})
        if reply.code == 401:
            log.info("{method} {url} answered 401 ({error}); trying once more with a new access token",
                     method=method, url=url, error=reply.error_text())
            self.tokens.rejected(token)
            token = await self._token()
            reply = await exchange(self.http, self.clock, method, url, timeout=self.timeout, json_body=body,
                                   headers={"Authorization": f"Bearer {token}"})
        return reply

    async def _token(self) -> str:
        try:
            return str(await self.tokens.token())
        except CancelledError:
            raise
        except Exception as exc:
            raise Unreachable(f"no access token ({exc})") from None

    async def _call(self, epoch: int, method: str, url: str, body: Any = None) -> Reply:
        """One request to the registry in use: _Switched if the client moved on meanwhile, _Failed on no answer or
        a 5xx."""
        try:
            reply = await self._track(self._request(method, url, body))
        except Unreachable as exc:
            if epoch != self._epoch:
                raise _Switched() from None
            raise _Failed(f"{method} {url}: {exc}") from None
        if epoch != self._epoch:
            raise _Switched()
        if reply.code >= 500:
            raise _Failed(f"{method} {url} answered {reply.code}: {reply.error_text()}")
        return reply

    def _start(self, work: Any) -> None:
        ensureDeferred(work).addErrback(lambda failure: log.failure("The registration client failed", failure))

    # --- heartbeats

    def _start_heartbeats(self) -> None:
        if self._loop is not None and self._loop.running:
            return
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        # Fixed rate: LoopingCall schedules each call from the start, not from when the last one finished, and
        # _tick does not wait for the answer, so slow POSTs never delay a heartbeat.
        self._loop.start(self.interval, now=False)

    def _stop_heartbeats(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _tick(self) -> None:
        if self._beating:
            log.warn("The last heartbeat to {choice} is still unanswered; skipping this one", choice=self.current)
            return
        self._start(self._beat(self._epoch))

    async def _beat(self, epoch: int, confirming: bool = False) -> None:
        choice = self.current
        assert choice is not None
        url = choice.candidate.api(choice.version, f"health/nodes/{self.model.node_id}")
        self._beating = True
        try:
            reply = await self._call(epoch, "POST", url)
        except _Switched:
            return
        except _Failed as exc:
            self._failed(epoch, f"heartbeat: {exc}")
            return
        finally:
            if epoch == self._epoch:
                self._beating = False
        if reply.code == 200:
            if not confirming:
                self._succeeded()
            else:
                self._confirming = False
                log.info("Registry {choice} knows the Node: heartbeating there, nothing registered again",
                         choice=choice)
                self._start_heartbeats()
                self._kick()
            return
        if reply.code == 404:
            log.warn("Registry {choice} does not know the Node (expired, or the registry restarted): registering "
                     "everything again", choice=choice)
        elif reply.code == 409:
            try:
                await self._delete_elsewhere(epoch, reply, "node", self.model.node_id)
            except _Switched:
                return
            except _Failed as exc:
                self._failed(epoch, str(exc))
                return
        else:
            log.error("Registry {choice} refused the heartbeat ({code}: {error})", choice=choice, code=reply.code,
                      error=reply.error_text())
            return
        self._held.clear()
        self._confirming = False
        self._set_state("registering")
        self._kick()

    async def _delete_elsewhere(self, epoch: int, reply: Reply, kind: str, rid: str) -> None:
        """IS-04 409: the registry holds the resource at another API version (its Location says which): delete it
        there, so it can be registered at ours."""
        choice = self.current
        assert choice is not None
        match = _LOCATION_VERSION.search(reply.headers.get("location", ""))
        if match is None:
            raise _Failed(f"{kind} {rid}: 409 without a Location naming the registered version")
        held = match.group(1)
        log.warn("Registry {choice} holds {kind} {id} at {held}: deleting it there to register it at {version}",
                 choice=choice, kind=kind, id=rid, held=held, version=choice.version)
        answer = await self._call(epoch, "DELETE", choice.candidate.api(held, f"resource/{PLURALS[kind]}/{rid}"))
        if answer.code not in (204, 404):
            raise _Failed(f"DELETE {kind} {rid} at {held} answered {answer.code}: {answer.error_text()}")

    # --- registering

    def _model_changed(self, kind: str, rid: str) -> None:
        self._kick()

    def _kick(self) -> None:
        """Bring the registry up to date with the Node, now or once the sync in progress ends."""
        self._dirty = True
        if self._syncing or self._confirming or self.current is None or not self.running:
            return
        self._start(self._sync_loop())

    async def _sync_loop(self) -> None:
        epoch = self._epoch
        self._syncing = True
        failure: str | None = None
        try:
            while self._dirty and epoch == self._epoch:
                self._dirty = False
                await self._sync(epoch)
        except _Switched:
            pass
        except _Failed as exc:
            failure = str(exc)
        finally:
            self._syncing = False
        if failure is not None:
            self._failed(epoch, failure)
        elif epoch != self._epoch:
            if self._dirty:
                self._kick()  # the registry now in use has work waiting
        else:
            self._succeeded()
            self._notify()

    async def _sync(self, epoch: int) -> None:
        choice = self.current
        assert choice is not None
        desired = {(view.kind, view.id): view for view in self.model.registrable(choice.version)}
        for key in sorted(set(self._held) - set(desired), key=lambda key: _CHILDREN_FIRST[key[0]]):
            if key in self._held:  # a cascade may have removed it already
                await self._delete(epoch, key)
        for key, view in desired.items():
            version = view.data["version"]  # type: ignore[index]
            if self._held.get(key) == version or self._refused.get(key) == version:
                continue
            parent_id, parent_kind = parent_of(view.kind, view.data)  # type: ignore[arg-type]
            if parent_kind is not None and (parent_kind, parent_id) not in self._held:
                log.debug("Not registering {kind} {id}: its {parent} is not registered", kind=view.kind, id=view.id,
                          parent=parent_kind)
                continue
            await self._post(epoch, view)
        if "node" in {kind for kind, _ in self._held} and self.state != "registered":
            self._set_state("registered")
            log.info("Registered the Node and its {count} resources with {choice}", count=len(self._held) - 1,
                     choice=choice)
        elif ("node", self.model.node_id) not in self._held and self.state != "refused":
            self._set_state("refused")

    async def _post(self, epoch: int, view: ResourceAtVersion, again: bool = False) -> None:
        choice = self.current
        assert choice is not None and view.data is not None
        key = (view.kind, view.id)
        first = key not in self._held
        reply = await self._call(epoch, "POST", choice.candidate.api(choice.version, "resource"),
                                 {"type": view.kind, "data": view.data})
        if reply.code in (200, 201):
            if reply.code == 200 and view.kind == "node" and first and not again:
                # IS-04: "If a Node receives a 200 (OK) code in this case, a previous record of the Node can be
                # assumed to still exist ... an HTTP DELETE SHOULD be performed".
                log.warn("Registry {choice} already held the Node (a stale record): deleting it and registering "
                         "again", choice=choice)
                answer = await self._call(epoch, "DELETE",
                                          choice.candidate.api(choice.version, f"resource/nodes/{view.id}"))
                if answer.code not in (204, 404):
                    raise _Failed(f"DELETE node answered {answer.code}: {answer.error_text()}")
                self._held.clear()
                await self._post(epoch, view, again=True)
                return
            self._held[key] = view.data["version"]
            self._held_at = choice.version
            self._refused.pop(key, None)
            log.debug("{action} {kind} {id} with {choice}", action="Registered" if reply.code == 201 else "Updated",
                      kind=view.kind, id=view.id, choice=choice)
            if view.kind == "node":
                self._start_heartbeats()
            return
        if reply.code == 409 and not again:
            await self._delete_elsewhere(epoch, reply, view.kind, view.id)
            if view.kind == "node":
                self._held.clear()
            else:
                self._held.pop(key, None)
            await self._post(epoch, view, again=True)
            return
        self._refused[key] = view.data["version"]
        log.error("Registry {choice} refused {kind} {id} ({code}: {error}); it is not sent again until it changes",
                  choice=choice, kind=view.kind, id=view.id, code=reply.code, error=reply.error_text())

    async def _delete(self, epoch: int, key: tuple[str, str]) -> None:
        choice = self.current
        assert choice is not None
        kind, rid = key
        version = self._held_at or choice.version
        reply = await self._call(epoch, "DELETE", choice.candidate.api(version, f"resource/{PLURALS[kind]}/{rid}"))
        if reply.code == 409:
            await self._delete_elsewhere(epoch, reply, kind, rid)
        elif reply.code not in (204, 404):
            log.error("Registry {choice} refused to delete {kind} {id} ({code}: {error})", choice=choice, kind=kind,
                      id=rid, code=reply.code, error=reply.error_text())
        self._held.pop(key, None)
        if kind == "node":
            self._held.clear()
        else:
            # The registry removed everything below it too.
            for child in [k for k in self._held if self._below(k, rid)]:
                self._held.pop(child, None)
        log.debug("Deleted {kind} {id} from {choice}", kind=kind, id=rid, choice=choice)

    def _below(self, key: tuple[str, str], ancestor: str) -> bool:
        """Whether the held resource `key` is (was) below `ancestor`, as the model knows its links."""
        data = self.model.get(*key)
        if data is None:
            return False
        for link in ("device_id", "source_id"):
            if data.get(link) == ancestor:
                return True
        return False
