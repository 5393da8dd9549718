"""The websocket phase's load scenario (ws-load): S subscribers connect at once while a thread changes the
registry at a fixed rate; every subscriber must then have every change of its type."""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .harness import Context, figures, ms
from .http import Recorder, build_request, percentile
from .query_api import listed_ids
from .server import API, machine_busy_ms, process_cpu_ms
from .synthetic import synthetic_node, tai_version
from .ws_client import (
    DRAIN_LIMIT,
    KIND,
    MAX_POLLS,
    Hub,
    Subscriber,
    TimedConnection,
    subscribe,
)

SYNCED_P99_TARGET_MS = 25.0  # issue 13, goal 4: grain p99 after the change, once the subscribers are in sync
PEAK_RSS_TARGET_MB = 400.0  # issue 13, goal 4: the registry's peak RSS at 10,000 Nodes x 100 subscribers
OPEN_WAIT = 30.0  # seconds for every handshake of a batch of subscribers to be answered
MODIFIED_KINDS = ("sender", "receiver", "flow", "source", "device", "node")  # round-robin order of modifications
CYCLE_MODIFICATIONS = 38  # per change cycle, with one Node registered (10 POSTs) and one deleted: 49 requests
SCENARIO_NODE_LIFETIME = 4  # cycles a Node registered during the load scenario lives before it is deleted
SCENARIO_NODE_BASE = 900_000  # label numbers of those Nodes: far from the population's


@dataclass
class WsState:
    """What the registry holds, as the websocket phase knows it: ids per type, and the data of the population's
    resources (modified in place as the load scenario changes them)."""

    known: dict[str, set[str]]
    data: dict[str, tuple[str, dict]]
    modifiable: dict[str, list[str]]


class Changer:
    """Changes the registry at `rate` requests per second from its own thread and connection, in cycles: one new
    Node (its ten resources, parents first, in one burst), CYCLE_MODIFICATIONS modifications of the population's
    resources (a new description and version), round-robin over the six types, and the deletion of the Node
    registered SCENARIO_NODE_LIFETIME cycles before (its ten resources removed by cascade). Once stopped, it
    deletes the Nodes it registered that are still there. Each change is noted as (type, id, version or "removed",
    kernel time of the answer)."""

    def __init__(self, ctx: Context, state: WsState, rate: float, limit_s: float) -> None:
        self.ctx, self.state, self.rate = ctx, state, rate
        self.conn = TimedConnection(ctx.server.host, ctx.server.port, ctx.request_timeout)
        self.stop = threading.Event()
        self.changes: list[tuple[str, str, str, float]] = []
        self.recorder = Recorder()
        self.requests = self.nodes_created = self.nodes_deleted = self.modifications = 0
        self.scenario_nodes_gone = 0  # DELETE answered 404: the Node had expired
        self.behind_max = 0.0
        self.alive: collections.deque[list[tuple[str, str, str]]] = collections.deque()
        self.next_modified = {kind: 0 for kind in MODIFIED_KINDS}
        per_cycle = 10 + CYCLE_MODIFICATIONS + 1
        self.cycles = int(limit_s * rate / per_cycle) + 1
        self.started: float | None = None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        self.started = start = time.monotonic()
        try:
            for cycle in range(self.cycles):
                actions: list[Callable[[], int]] = [self.register_node]
                kinds = [MODIFIED_KINDS[(cycle * CYCLE_MODIFICATIONS + i) % len(MODIFIED_KINDS)]
                         for i in range(CYCLE_MODIFICATIONS)]
                actions += [lambda k=kind: self.modify(k) for kind in kinds]
                if len(self.alive) >= SCENARIO_NODE_LIFETIME:
                    actions.append(self.delete_oldest)
                for action in actions:
                    wait = start + self.requests / self.rate - time.monotonic()
                    if wait > 0:
                        self.stop.wait(wait)
                    else:
                        self.behind_max = max(self.behind_max, -wait)
                    if self.stop.is_set() or time.monotonic() > self.ctx.deadline:
                        break
                    self.requests += action()
                else:
                    continue
                break
            for _ in range(len(self.alive)):
                if time.monotonic() > self.ctx.deadline:
                    break
                self.requests += self.delete_oldest()
        finally:
            self.conn.close()

    def _post(self, kind: str, data: dict, expect: int) -> bool:
        body = json.dumps({"type": kind, "data": data}, separators=(",", ":")).encode()
        answer = self.recorder.call(self.conn, build_request("POST", API + "/resource", self.ctx.host_header, body),
                                    expect)
        if answer is None or answer[0] != expect:
            return False
        self.changes.append((kind, data["id"], data["version"], self.conn.arrived))
        return True

    def register_node(self) -> int:
        node = synthetic_node(SCENARIO_NODE_BASE + self.nodes_created, time.time())
        self.nodes_created += 1
        registered = [(kind, data["id"], data["version"]) for kind, data in node if self._post(kind, data, 201)]
        if registered and registered[0][0] == "node":
            self.alive.append(registered)
        return len(node)

    def modify(self, kind: str) -> int:
        ids = self.state.modifiable[kind]
        if not ids:
            return 0
        rid = ids[self.next_modified[kind] % len(ids)]
        self.next_modified[kind] += 1
        self.modifications += 1
        _, data = self.state.data[rid]
        # A new description and a later version: a change (IS-04: id + version name one variant), label kept.
        changed = data | {"description": f"synthetic {kind}, change {self.modifications}",
                          "version": tai_version(time.time())}
        if self._post(kind, changed, 200):
            self.state.data[rid] = (kind, changed)
        return 1

    def delete_oldest(self) -> int:
        resources = self.alive.popleft()
        answer = self.recorder.call(self.conn, build_request(
            "DELETE", f"{API}/resource/nodes/{resources[0][1]}", self.ctx.host_header), 204)
        if answer is not None and answer[0] == 204:
            self.nodes_deleted += 1
            self.changes += [(kind, rid, "removed", self.conn.arrived) for kind, rid, _ in resources]
        elif answer is not None and answer[0] == 404:
            self.scenario_nodes_gone += 1
        return 1


def cpu_marks(ctx: Context, helper_pid: int | None) -> tuple[float | None, ...]:
    """Now, in CPU ms: the whole machine, the registry, this process, the heartbeat process; and the monotonic time."""
    return (machine_busy_ms(), ctx.server.cpu_ms(), time.process_time() * 1000,
            process_cpu_ms(helper_pid) if helper_pid else None, time.monotonic())


def machine_shares(before: tuple[float | None, ...], after: tuple[float | None, ...]) -> dict:
    """How much of the machine (in cores) each side used between two `cpu_marks`: the registry, this client (the
    subscribers and the change thread), the heartbeat process, and every other process."""
    wall = after[4] - before[4]
    used = [None if None in (a, b) or wall <= 0 else (b - a) / (wall * 1000) for a, b in zip(before[:4], after[:4])]
    others = None if None in used[:3] else max(0.0, used[0] - sum(u or 0.0 for u in used[1:]))
    return {"wall_s": wall, "machine_cores": used[0], "registry_cores": used[1], "client_cores": used[2],
            "heartbeat_process_cores": used[3], "other_cores": others}


def ws_load(ctx: Context, state: WsState, http: TimedConnection, helper_pid: int | None = None) -> dict:
    """S subscribers, spread over `--ws-paths`, connect at once; changes flow from when every handshake is answered
    until `--ws-after` s after the last subscriber has its initial state; then every subscriber must get every
    change of its type (DRAIN_LIMIT s at most). `helper_pid`: the heartbeat process, whose CPU is reported too."""
    opts = ctx.ws
    paths = []
    collections_ = [opts.paths[i % len(opts.paths)] for i in range(opts.subscribers)]
    statuses: collections.Counter = collections.Counter()
    # What each subscriber's initial state must hold: what the Query API lists now (nothing changes until the
    # subscribers are connected), checked against what this phase registered. Read before the subscriptions are
    # made: a subscription without a WebSocket for 30 s is removed, and a busy registry lists slowly.
    expect = {collection: listed_ids(ctx, http, collection) for collection in set(collections_)}
    for collection in collections_:
        status, path = subscribe(http, ctx, collection)
        statuses[status] += 1
        paths.append(path)
    mismatch = {c: {"listed_not_registered": len(ids - state.known[KIND[c]]),
                    "registered_not_listed": len(state.known[KIND[c]] - ids)}
                for c, ids in expect.items() if ids != state.known[KIND[c]]}
    hub, subscribers = Hub(), []
    changer = Changer(ctx, state, opts.change_rate, opts.sync_timeout + opts.after + 60)
    rss = [ctx.server.rss_kib()]
    sync_timed_out = timed_out = drained = False
    sync_cpu: tuple[float | None, float] | None = None
    synced_at = changes_end = None
    server_before, client_before = ctx.server.cpu_ms(), time.process_time()
    first, window_start = time.time(), time.monotonic()
    marks_before, marks_sync = cpu_marks(ctx, helper_pid), None
    try:
        for index, (collection, path) in enumerate(zip(collections_, paths)):
            subscribers.append(Subscriber(index, collection, path, ctx.server, expect[collection],
                                          ctx.request_timeout))
            hub.add(subscribers[-1])
        connects_s = time.time() - first
        hub.wait(lambda: all(s.state != "handshake" for s in subscribers), time.monotonic() + OPEN_WAIT)
        # Every subscriber has its snapshot now (the server takes it as it answers the handshake): from here on
        # every change must reach every subscriber of its type.
        changer.thread.start()
        sync_limit = min(ctx.deadline, window_start + opts.sync_timeout)
        last_rss = time.monotonic()
        for _ in range(MAX_POLLS):  # and the times below
            now = time.monotonic()
            if now - last_rss >= 0.5:
                rss.append(ctx.server.rss_kib())
                last_rss = now
            if synced_at is None and all(s.sync_done is not None or s.closed for s in subscribers):
                synced_at = now
                sync_cpu = ctx.server.cpu_ms(), time.process_time()
                marks_sync = cpu_marks(ctx, helper_pid)
            if synced_at is not None and now >= synced_at + opts.after:
                break
            if synced_at is None and now > sync_limit:
                sync_timed_out, timed_out = True, now > ctx.deadline
                break
            if not changer.thread.is_alive():
                break
            hub.poll(0.05)
        if marks_sync is None:  # no complete sync: the shares up to when the scenario gave up
            marks_sync = cpu_marks(ctx, helper_pid)
        changer.stop.set()
        hub.wait(lambda: not changer.thread.is_alive(), time.monotonic() + 2 * ctx.request_timeout)
        changes_end = time.monotonic()
        expected: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
        for kind, rid, marker, _ in changer.changes:
            expected[kind].append((rid, marker))
        drained = hub.wait(lambda: all(s.closed or all(k in s.changes for k in expected[s.kind])
                                       for s in subscribers), time.monotonic() + DRAIN_LIMIT)
        rss.append(ctx.server.rss_kib())
    finally:
        changer.stop.set()
        if changer.thread.ident is not None:
            changer.thread.join(ctx.request_timeout + 5)
        window_end = time.monotonic()
        server_after, client_after = ctx.server.cpu_ms(), time.process_time()
        hub.close()
    wall = window_end - window_start
    server_cpu = server_after - server_before if server_before is not None and server_after is not None else None
    # What every subscriber got of the changes of its type, and how long after the change's answer.
    answered = {(rid, marker): at for _, rid, marker, at in changer.changes}
    latencies, lost, extra, population_removed = [], 0, 0, 0
    synced_latencies, syncing_latencies = [], []  # to subscribers that had their initial state then, and not yet
    # Changes answered once every subscriber had its initial state: the steady state issue 13 judges (goal 4).
    done = [s.sync_done for s in subscribers]
    all_synced = max(done) if done and None not in done else None
    steady_latencies = []
    lost_by: dict[int, int] = {}
    held_nodes = state.known["node"]
    for s in subscribers:
        mine = expected[s.kind]
        missed = sum(key not in s.changes for key in mine)
        lost += missed
        if missed:
            lost_by[s.index] = missed
        for key in mine:
            if key in s.changes:
                latency = s.changes[key] - answered[key]
                latencies.append(latency)
                (synced_latencies if s.sync_done is not None and s.sync_done <= answered[key]
                 else syncing_latencies).append(latency)
                if all_synced is not None and answered[key] >= all_synced:
                    steady_latencies.append(latency)
        wanted = set(mine)
        for key in s.changes:
            if key not in wanted:
                extra += 1
                population_removed += key[1] == "removed" and key[0] in held_nodes
    latencies.sort()
    synced_latencies.sort()
    syncing_latencies.sort()
    steady_latencies.sort()
    sync_times = sorted(s.sync_done - first for s in subscribers if s.sync_done is not None)
    incomplete = [{"subscriber": s.index, "collection": s.collection, "state": s.state, "closed": s.closed,
                   "missing": len(s.missing), "missing_sample": sorted(s.missing)[:3], "sync_events": s.sync_events,
                   "expected_sync": s.expected_sync, "grains": s.grains, "bytes": s.bytes,
                   "last_grain_s": s.last_grain - first if s.last_grain else None,
                   "buffered": len(s.buf)} for s in subscribers if s.sync_done is None]
    closed = [f"subscriber {s.index} ({s.collection}): {s.closed}" for s in subscribers
              if s.closed and s.closed != "closed by us"]
    rec = changer.recorder
    result = figures("ws-load", rec, wall, None, (client_after - client_before) * 1000, timed_out, None)
    result.update({
        "requests": changer.requests,
        "requests_per_s": changer.requests / (changes_end - changer.started) if changer.started and changes_end
        else None,
        "latency_p50_ms": ms(percentile(latencies, 0.50)), "latency_p99_ms": ms(percentile(latencies, 0.99)),
        "latency_max_ms": ms(latencies[-1] if latencies else None),
        "client_cpu_ms_per_request": None, "server_cpu_ms": server_cpu, "server_cpu_ms_per_request": None,
        "server_busy": server_cpu / (wall * 1000) if server_cpu is not None and wall else None,
        "subscribers": len(subscribers), "collections": dict(collections.Counter(collections_)),
        "subscriptions_created": statuses[201], "subscriptions_reused": statuses[200],
        "expected_sync_per_collection": {c: len(ids) for c, ids in expect.items()},
        "sync_events": sum(s.sync_events for s in subscribers), "sync_bytes": sum(s.bytes for s in subscribers),
        "connects_s": connects_s, "client_cpu_ms": (client_after - client_before) * 1000,
        "handshakes_s": max((s.opened for s in subscribers if s.opened), default=first) - first,
        "sync_s": (max(sync_times) if len(sync_times) == len(subscribers) else None),
        "sync_p50_s": percentile(sync_times, 0.5), "sync_min_s": sync_times[0] if sync_times else None,
        "sync_complete": len(sync_times), "sync_timed_out": sync_timed_out, "incomplete": incomplete,
        "listing_mismatch": mismatch,
        # CPU from the first connect until every subscriber had its initial state (as this loop noticed it)
        "sync_server_cpu_ms": (sync_cpu[0] - server_before if sync_cpu and sync_cpu[0] is not None
                               and server_before is not None else None),
        "sync_client_cpu_ms": (sync_cpu[1] - client_before) * 1000 if sync_cpu else None,
        "sync_window_s": (synced_at - window_start) if synced_at else None,
        "synced_notifications": len(synced_latencies),
        "synced_p50_ms": ms(percentile(synced_latencies, 0.5)), "synced_p99_ms": ms(percentile(synced_latencies, 0.99)),
        "synced_max_ms": ms(synced_latencies[-1] if synced_latencies else None),
        "steady_notifications": len(steady_latencies),
        "steady_p50_ms": ms(percentile(steady_latencies, 0.5)), "steady_p99_ms": ms(percentile(steady_latencies, 0.99)),
        "steady_max_ms": ms(steady_latencies[-1] if steady_latencies else None),
        "syncing_notifications": len(syncing_latencies),
        "syncing_p50_ms": ms(percentile(syncing_latencies, 0.5)),
        "syncing_p99_ms": ms(percentile(syncing_latencies, 0.99)),
        "syncing_max_ms": ms(syncing_latencies[-1] if syncing_latencies else None),
        "first_change_s": (changer.started - window_start) if changer.started else None,
        "changes_s": (changes_end - changer.started) if changer.started and changes_end else None,
        "changes": len(changer.changes), "nodes_created": changer.nodes_created,
        "nodes_deleted": changer.nodes_deleted, "modifications": changer.modifications,
        "scenario_nodes_gone": changer.scenario_nodes_gone, "changer_behind_max_s": changer.behind_max,
        "notifications_expected": sum(len(expected[s.kind]) for s in subscribers),
        "notifications_received": len(latencies), "lost_notifications": lost, "lost_by_subscriber": lost_by,
        "drained": drained, "extra_events": extra, "population_nodes_removed_events": population_removed,
        "duplicates": sum(s.duplicates for s in subscribers), "malformed": sum(s.malformed for s in subscribers),
        "other_sync_events": sum(s.other_sync for s in subscribers),
        "client_read_lag_max_ms": max((s.read_lag for s in subscribers), default=0.0) * 1000,
        # during the initial sync (until the last subscriber had its state, or the scenario gave up), in cores
        "sync_machine_shares": machine_shares(marks_before, marks_sync) if marks_sync else None,
        "changes_per_s": len(changer.changes) / (changes_end - changer.started) if changer.started and changes_end
        else None,
        "synced_target_p99_ms": SYNCED_P99_TARGET_MS,
        "server_vmhwm_kib_end": ctx.server.peak_rss_kib(), "target_peak_rss_mb": PEAK_RSS_TARGET_MB,
        "server_rss_kib_before": rss[0], "server_rss_kib_peak": max((r for r in rss if r), default=None),
        "server_rss_kib_end": rss[-1], "closed_early": closed, "window": (window_start, window_end),
        "wrong_results": lost + len(closed) + changer.scenario_nodes_gone + len(incomplete) + len(mismatch),
    })
    result["error_samples"] += closed[:5 - len(result["error_samples"])]
    return result
