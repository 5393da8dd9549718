"""The query phase: Query API figures at a given number of resources (label query, id lookup, paging walks,
unpaged v1.0 lists), each taken one request at a time with nothing else sent to the registry meanwhile."""

from __future__ import annotations

import collections
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .harness import Context, figures, run_pool
from .http import Connection, ProtocolError, Recorder, build_request
from .phase_register import new_nodes, register_nodes
from .query_api import QUERY, V10_COLLECTIONS, json_ids, link_path
from .server import API
from .synthetic import NODE_LAYOUT

# The query phase. Its figures are taken on one connection, one request at a time, with nothing else sent to the
# registry meanwhile; the registered Nodes are heartbeated between blocks of measured requests, never during one.

# IS-04 "Behaviour - Registration": the registry removes a Node 12 s after its last heartbeat. A block of measured
# requests must end within this many seconds of the start of the keep-alive sweep before it (3 s to spare).
QUIET_BUDGET = 9.0
LABEL_TARGET_MS = 3.6  # issue 3: a tenth of nmos-cpp's measured 36 ms for a label query at 50,000 resources
LATENCY_LIMIT_MS = 1000.0  # issue 3: every request, the full unpaged v1.0 list included, answers well within 1 s
LABEL_CHUNK = 100  # label queries and id lookups per measured block


class OutOfTime(Exception):
    """The overall --timeout passed before the next measured block."""


@dataclass
class Cost:
    """What one block of measured requests cost: server CPU ms (None without a PID), client CPU ms, wall s."""

    server_ms: float | None
    client_ms: float
    wall_s: float


@dataclass
class Tally:
    """One row of the query phase being measured: its requests, and the summed cost of its blocks."""

    recorder: Recorder = field(default_factory=Recorder)
    wall: float = 0.0
    server_ms: float | None = 0.0
    client_ms: float = 0.0
    blocks: list[Cost] = field(default_factory=list)
    wrong: int = 0  # 200 answers whose content was not what the query must return
    wrong_samples: list[str] = field(default_factory=list)

    def add(self, cost: Cost) -> None:
        self.blocks.append(cost)
        self.wall += cost.wall_s
        self.client_ms += cost.client_ms
        self.server_ms = None if self.server_ms is None or cost.server_ms is None else self.server_ms + cost.server_ms

    def mistake(self, text: str) -> None:
        self.wrong += 1
        if len(self.wrong_samples) < 5:
            self.wrong_samples.append(text)

    def merged(self, *others: Tally) -> Tally:
        whole = Tally()
        for tally in (self, *others):
            whole.recorder.merge(tally.recorder)
            for cost in tally.blocks:
                whole.add(cost)
            whole.wrong += tally.wrong
            whole.wrong_samples += tally.wrong_samples[:5 - len(whole.wrong_samples)]
        return whole

    def figures(self, name: str, timed_out: bool, target_ms: float | None = None, **extra: Any) -> dict:
        result = figures(name, self.recorder, self.wall, self.server_ms, self.client_ms, timed_out, target_ms,
                         wrong_results=self.wrong, blocks=len(self.blocks), **extra)
        result["error_samples"] += self.wrong_samples[:5 - len(result["error_samples"])]
        return result


class Quiet:
    """Measured requests on one keep-alive connection, one at a time, with nothing else sent to the registry.

    Before a block of requests that might not end within QUIET_BUDGET of the last keep-alive sweep's start, every
    registered Node is heartbeated (over the pool), so none expires while figures are taken and no heartbeat runs
    during a block. The server's CPU is read at block boundaries; consecutive blocks share a reading, so the 10 ms
    tick error does not add up block after block."""

    def __init__(self, ctx: Context, node_ids: Sequence[str], budget: float = QUIET_BUDGET) -> None:
        self.ctx, self.budget = ctx, budget
        self.beats = [build_request("POST", f"{API}/health/nodes/{nid}", ctx.host_header) for nid in node_ids]
        self.conn = Connection(ctx.server.host, ctx.server.port, ctx.request_timeout)
        self.keepalive = Recorder()
        self.sweeps = 0
        self.short_windows = 0  # blocks started with less time left than estimated (a slow sweep)
        self.fresh_at: float | None = None  # monotonic start of the last keep-alive sweep
        self._server_mark: float | None = None  # server CPU at the end of the last block, if no sweep since

    def close(self) -> None:
        self.conn.close()

    def left(self) -> float:
        return -1.0 if self.fresh_at is None else self.fresh_at + self.budget - time.monotonic()

    def sweep(self) -> None:
        def beat(conn: Connection, request: bytes, rec: dict[str, Recorder]) -> None:
            rec["keepalive"].call(conn, request, 200)

        self.fresh_at, self._server_mark = time.monotonic(), None
        recorders, _, _ = run_pool(self.ctx, self.beats, beat, ("keepalive",))
        self.keepalive.merge(recorders["keepalive"])
        self.sweeps += 1

    def block(self, estimate: float, run: Callable[[Connection], Any]) -> tuple[Any, Cost]:
        """Runs `run(connection)` as one measured block, sweeping first if it might outlast the window."""
        if time.monotonic() > self.ctx.deadline:
            raise OutOfTime
        if self.left() < estimate:
            self.sweep()
            self.short_windows += self.left() < estimate
        server_before = self._server_mark if self._server_mark is not None else self.ctx.server.cpu_ms()
        client_before, start = time.process_time(), time.perf_counter()
        result = run(self.conn)
        wall = time.perf_counter() - start
        server_after, client_after = self.ctx.server.cpu_ms(), time.process_time()
        self._server_mark = server_after
        server = server_after - server_before if server_before is not None and server_after is not None else None
        return result, Cost(server, (client_after - client_before) * 1000, wall)


def spread(items: Sequence[Any], count: int) -> list[Any]:
    """Up to `count` items taken evenly across `items`."""
    count = min(count, len(items))
    return [items[i * len(items) // count] for i in range(count)]


def top_up(ctx: Context, wanted_nodes: int) -> dict:
    """Registers new Nodes until `wanted_nodes` are registered (unreported); what it did, for the summary."""
    missing = wanted_nodes - len(ctx.registered)
    if missing <= 0:
        return {"nodes_registered": 0}
    print(f"registering {missing} more nodes for the query phase (not reported) ...", file=sys.stderr)
    recorders, wall, timed_out, server_cpu, _, posts, accepted = register_nodes(ctx, new_nodes(ctx, missing),
                                                                                ctx.registered)
    rec = recorders["register"]
    rec.merge(recorders["keepalive"])
    return {"nodes_registered": len(accepted), "nodes_attempted": missing, "posts": posts, "wall_s": wall,
            "server_cpu_ms": server_cpu, "timed_out": timed_out,
            "keepalive_heartbeats": len(recorders["keepalive"].latencies) + recorders["keepalive"].errors,
            "failures": rec.unexpected + rec.errors, "error_samples": rec.error_samples}


def phase_query(ctx: Context) -> dict:
    """Query API figures at `ctx.query_resources` resources: label query, id lookup, paging walks, v1.0 full lists.

    Registers (unreported) as many new Nodes as it takes first; see `Quiet` for how the figures are taken."""
    wanted_nodes = max(-(-ctx.query_resources // len(NODE_LAYOUT)), 1)
    setup = top_up(ctx, wanted_nodes)
    by_id = {node[0][1]["id"]: node for node in ctx.population}
    held = [by_id[nid] for nid in ctx.registered if nid in by_id]
    if not held:
        return {"phase": "query", "skipped": "no registered nodes", "setup": setup, "rows": {}}
    expected = {f"{kind}s": count * len(held) for kind, count in collections.Counter(NODE_LAYOUT).items()}
    senders = [data for node in held for kind, data in node if kind == "sender"]
    server, host, repeats = ctx.server, ctx.host_header, max(1, ctx.query_repeats)
    settled = server.settle()
    quiet = Quiet(ctx, ctx.registered)
    rows: dict[str, Tally] = {}
    details: dict[str, Any] = {}
    cold: dict[str, Tally] = {}
    sizes: dict[str, int] = {}
    timed_out = False

    def looked_up(name: str, paths: list[str], want: list[str], single: bool) -> None:
        """GETs each path once, in blocks of LABEL_CHUNK; each must answer 200 with exactly the resource `want`."""
        tally = rows[name] = Tally()
        estimate = 3.0
        for first in range(0, len(paths), LABEL_CHUNK):
            requests = [build_request("GET", path, host) for path in paths[first:first + LABEL_CHUNK]]
            answers, cost = quiet.block(estimate, lambda conn, requests=requests: [
                tally.recorder.call(conn, r, 200) for r in requests])
            tally.add(cost)
            estimate = 2 * cost.wall_s + 0.5
            for answer, rid, path in zip(answers, want[first:], paths[first:]):
                if answer is None or answer[0] != 200:
                    continue
                if single:
                    try:
                        got = [json.loads(answer[2]).get("id")]
                    except (ValueError, AttributeError):
                        got = None
                else:
                    got = json_ids(answer[2])
                if got != [rid]:
                    tally.mistake(f"GET {path}: {len(got) if got is not None else 'no'} results, not [{rid}]")

    def walks(name: str, limit: int) -> None:
        """Walks every Sender at v1.3 from the newest page along rel="prev" (older items) until X-Paging-Since is
        0:0 ("no older match left out"), `repeats` times; each walk must return every Sender exactly once."""
        tally = rows[name] = Tally()
        per_walk = details.setdefault("walks", {})[name] = []
        most = expected["senders"] // limit + 5
        estimate = 5.0

        def walk(conn: Connection) -> tuple[list[bytes], str | None]:
            bodies: list[bytes] = []
            path = f"{QUERY}/v1.3/senders?paging.limit={limit}"
            for _ in range(most):
                answer = tally.recorder.call(conn, build_request("GET", path, host), 200)
                if answer is None or answer[0] != 200:
                    return bodies, f"GET {path} failed"
                _, headers, body = answer
                bodies.append(body)
                if headers.get("x-paging-limit") != str(limit):
                    return bodies, f"X-Paging-Limit {headers.get('x-paging-limit')!r}, asked {limit}"
                if headers.get("x-paging-since") == "0:0":
                    return bodies, None
                try:
                    path = link_path(headers, "prev", server)
                except ProtocolError as e:
                    return bodies, str(e)
            return bodies, f"still not at the oldest page after {most} pages"

        for _ in range(repeats):
            (bodies, problem), cost = quiet.block(estimate, walk)
            tally.add(cost)
            estimate = 2 * cost.wall_s + 0.5
            ids = [rid for body in bodies for rid in (json_ids(body) or [])]
            if problem is None and (len(ids) != len(set(ids)) or len(ids) != expected["senders"]):
                problem = f"{len(ids)} items, {len(set(ids))} distinct, {expected['senders']} senders held"
            if problem is not None:
                tally.mistake(f"walk with paging.limit={limit}: {problem}")
            per_walk.append({"pages": len(bodies), "items": len(ids), "wall_ms": cost.wall_s * 1000,
                             "server_cpu_ms": cost.server_ms, "problem": problem})

    def v10_list(tally: Tally, collection: str, cold_size: int | None) -> tuple[int, int | None]:
        """GETs one whole v1.0 collection as one block; returns its size in bytes and, when parsed, its count."""
        request = build_request("GET", f"{QUERY}/v1.0/{collection}", host)
        estimate = 2 * max((c.wall_s for c in tally.blocks), default=1.5) + 0.5
        answer, cost = quiet.block(estimate, lambda conn: tally.recorder.call(conn, request, 200))
        tally.add(cost)
        if answer is None or answer[0] != 200:
            return 0, None
        body, count = answer[2], None
        if len(body) != cold_size:  # the registry has not changed, so neither should the answer: count otherwise
            count = len(ids) if (ids := json_ids(body)) is not None else None
            if count != expected[collection]:
                tally.mistake(f"GET {QUERY}/v1.0/{collection}: {count} resources, {expected[collection]} held")
        return len(body), count

    try:
        # 1. label queries: each a different Sender's unique label, so each must find exactly that Sender
        picks = spread(senders, ctx.query_requests)
        looked_up("q-label", [f"{QUERY}/v1.3/senders?label={quote(s['label'])}" for s in picks],
                  [s["id"] for s in picks], single=False)
        # 2. single resources by id
        picks = spread(senders[1:] + senders[:1], ctx.query_requests)  # other Senders than the label queries'
        looked_up("q-id", [f"{QUERY}/v1.3/senders/{s['id']}" for s in picks], [s["id"] for s in picks], single=True)
        # 3. paging walks (the first walk encodes each Sender at v1.3 for the first time)
        walks("q-page100", 100)
        walks("q-page1000", 1000)
        # 4. v1.0 lists: never paged, every resource translated from v1.3 (cold: the first GET of each collection)
        counts: dict[str, int | None] = {}
        for collection in V10_COLLECTIONS:
            cold[collection] = Tally()
            sizes[collection], counts[collection] = v10_list(cold[collection], collection, None)
        details["v1.0_cold"] = {c: {"bytes": sizes[c], "resources": counts[c],
                                    "latency_ms": t.recorder.latencies[0] * 1000 if t.recorder.latencies else None,
                                    "server_cpu_ms": t.server_ms} for c, t in cold.items()}
        largest = max(V10_COLLECTIONS, key=lambda c: sizes[c])
        details["largest"] = largest
        rows["q-v10-cold"] = cold[largest]
        rows["q-v10-warm"] = warm = Tally()
        for _ in range(repeats):
            v10_list(warm, largest, sizes[largest])
        rows["q-all-cold"] = Tally().merged(*cold.values())
        rows["q-all-warm"] = sweeps = Tally()
        details["all_warm_sweeps"] = []
        estimate = 2 * sum(tally.wall for tally in cold.values()) + 0.5
        for _ in range(repeats):
            requests = [build_request("GET", f"{QUERY}/v1.0/{c}", host) for c in V10_COLLECTIONS]
            answers, cost = quiet.block(estimate, lambda conn, requests=requests: [
                sweeps.recorder.call(conn, r, 200) for r in requests])
            # One block per sweep: its CPU is the sweep's; the row still counts HTTP requests.
            sweeps.add(cost)
            estimate = 2 * cost.wall_s + 0.5
            details["all_warm_sweeps"].append({"wall_ms": cost.wall_s * 1000, "server_cpu_ms": cost.server_ms})
            for collection, answer in zip(V10_COLLECTIONS, answers):
                if answer and answer[0] == 200 and len(answer[2]) != sizes[collection]:
                    count = len(ids) if (ids := json_ids(answer[2])) is not None else None
                    if count != expected[collection]:
                        sweeps.mistake(f"GET {QUERY}/v1.0/{collection}: {count} resources, {expected[collection]} held")
    except OutOfTime:
        timed_out = True
    finally:
        quiet.close()

    order = ("q-label", "q-id", "q-page100", "q-page1000", "q-v10-cold", "q-v10-warm", "q-all-cold", "q-all-warm")
    results = {name: rows[name].figures(name, timed_out, LABEL_TARGET_MS if name == "q-label" else None)
               for name in order if name in rows}
    if "q-all-cold" in results:
        results["q-all-cold"]["sweep_wall_ms"] = sum(t.wall for t in cold.values()) * 1000
    keepalive = quiet.keepalive
    return {
        "phase": "query", "rows": results, "timed_out": timed_out,
        "nodes_held": len(held), "resources_held": sum(expected.values()), "expected_counts": expected,
        "setup": setup, "settle_s": settled,
        "keepalive_sweeps": quiet.sweeps, "keepalive_heartbeats": len(keepalive.latencies) + keepalive.errors,
        "keepalive_non_2xx": sum(v for k, v in keepalive.statuses.items() if not 200 <= k < 300),
        "keepalive_transport_errors": keepalive.errors, "short_windows": quiet.short_windows,
        "error_samples": keepalive.error_samples + setup.get("error_samples", []),
        "latency_limit_ms": LATENCY_LIMIT_MS, **details,
    }
