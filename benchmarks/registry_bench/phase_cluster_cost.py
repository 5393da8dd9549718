"""The cluster's cost beside the in-memory store's, in one sitting (issue 14): for the in-memory registry and for a
cluster of three etcd with 1, 2 and 3 nmos-ref members, each started afresh:

- registration: `nodes` synthetic Nodes (ten resources each) POSTed over `concurrency` keep-alive connections spread
  over the members: throughput, and CPU per registration of the members (all of them: every member's replica applies
  every write) and of etcd (all three), apart and together;
- heartbeats: every Node `rounds` times over the same connections: the same figures per heartbeat;
- grain latency: one subscriber of /senders at the last member, Senders registered one at a time at the first (the
  same process in memory): from the kernel's receipt of the 201 to its receipt of the grain, p50 and p99;
- etcd's own memory (RSS, peak RSS) and the size of its data folders at the end.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from dataclasses import dataclass

from .cluster import MEMBER_CMD, Cluster, Target
from .harness import HEARTBEAT_INTERVAL, Context, ms
from .http import ProtocolError, build_request, percentile
from .phase_failover import subscribe_at
from .phase_register import new_nodes, phase_heartbeat, register_nodes
from .phase_websocket import GRAIN_WAIT
from .server import API, Server, start_registry, stop_registry
from .synthetic import synthetic_node, tai_version
from .ws_client import KIND, Hub, Subscriber, TimedConnection
from .ws_load import SCENARIO_NODE_BASE, WsState


@dataclass
class CostOptions:
    nodes: int = 500
    concurrency: int = 12
    rounds: int = 3
    latency_posts: int = 300
    members: tuple[int, ...] = (1, 2, 3)


def _cpu(cluster: Cluster | None, server: Server) -> tuple[float, float]:
    """(members' CPU ms, etcd's CPU ms) now."""
    if cluster is None:
        return server.cpu_ms() or 0.0, 0.0
    return cluster.members_cpu_ms(), cluster.etcd_cpu_ms()


def _per_request(before: tuple[float, float], after: tuple[float, float], requests: int) -> dict:
    members, etcd = after[0] - before[0], after[1] - before[1]
    return {"members_cpu_ms": members / requests if requests else None,
            "etcd_cpu_ms": etcd / requests if requests else None,
            "total_cpu_ms": (members + etcd) / requests if requests else None}


def measure(name: str, members: list[Server], cluster: Cluster | None, opts: CostOptions) -> dict:
    first, last = members[0], members[-1]
    server = Target(first, cluster) if cluster is not None else first
    ctx = Context(server, opts.nodes, opts.concurrency, opts.rounds, HEARTBEAT_INTERVAL, time.monotonic() + 1800,
                  30.0, targets=[(m.host, m.port) for m in members])
    row: dict = {"config": name, "members": len(members)}
    # Registration
    print(f"cost {name}: registering {opts.nodes} nodes ...", file=sys.stderr)
    nodes = new_nodes(ctx, opts.nodes)
    before = _cpu(cluster, first)
    recorders, wall, _, _, _, posts, _ = register_nodes(ctx, nodes)
    after = _cpu(cluster, first)
    register = recorders["register"]
    row["register"] = {"posts": posts, "created": register.statuses.get(201, 0),
                       "failures": register.unexpected + register.errors, "wall_s": wall,
                       "per_s": posts / wall if wall else None,
                       "keepalive_heartbeats": len(recorders["keepalive"].latencies),
                       **_per_request(before, after, posts)}
    # Heartbeats
    print(f"cost {name}: heartbeats ...", file=sys.stderr)
    before = _cpu(cluster, first)
    beats = phase_heartbeat(ctx)
    after = _cpu(cluster, first)
    row["heartbeat"] = {"requests": beats["requests"], "failures": beats["unexpected_status"]
                        + beats["transport_errors"], "per_s": beats["requests_per_s"],
                        **_per_request(before, after, beats["requests"])}
    # Grain latency: a subscriber at the last member, Senders posted at the first.
    print(f"cost {name}: grain latency ...", file=sys.stderr)
    state = WsState({kind: set() for kind in KIND.values()}, {}, {kind: [] for kind in KIND.values()})
    for node in nodes:
        for kind, data in node:
            state.known[kind].add(data["id"])
    http = TimedConnection(first.host, first.port, 30.0)
    template = synthetic_node(SCENARIO_NODE_BASE - 1, time.time())
    for kind, data in (template[0], template[1], template[2], template[4]):
        body = json.dumps({"type": kind, "data": data}, separators=(",", ":")).encode()
        status, _, reply = http.exchange(build_request("POST", API + "/resource", f"{first.host}:{first.port}", body))
        if status != 201:
            raise ProtocolError(f"registering the latency Node's {kind} answered {status}: {reply[:200]!r}")
    sender, now, posts_ = template[6][1], time.time(), []
    for k in range(opts.latency_posts):
        data = sender | {"id": str(uuid.uuid4()), "label": f"bench-sender-latency-{k:06d}", "version": tai_version(now)}
        posts_.append((data["id"], data["version"], build_request(
            "POST", API + "/resource", f"{first.host}:{first.port}",
            json.dumps({"type": "sender", "data": data}, separators=(",", ":")).encode())))
    grains = grain_latency(first, last, http, posts_, state.known["sender"])
    http.close()
    row["grain"] = grains
    row["members_rss_kib"] = [m.rss_kib() for m in members]
    if cluster is not None:
        row["etcd"] = cluster.etcd_memory()
    return row


def grain_latency(first: Server, last: Server, http: TimedConnection, posts: list[tuple[str, str, bytes]],
                  senders: set[str]) -> dict:
    """One subscriber of /senders at `last`; each of `posts` (a new Sender) registered at `first` over `http`, one
    at a time: from its sending to the kernel's receipt of its grain, and from the kernel's receipt of its 201 to
    that of its grain (below 0 where the grain came first: a member answers a write once its own replica has it,
    and another member's replica may have it sooner)."""
    hub = Hub()
    subscriber = Subscriber(0, "senders", subscribe_at(last, "senders"), last, set(senders), 30.0)
    hub.add(subscriber)
    latencies, from_sent, lost, failures = [], [], 0, 0
    try:
        if not hub.wait(lambda: subscriber.sync_done is not None or subscriber.closed, time.monotonic() + 60):
            raise ProtocolError("the subscriber did not get its initial state in time")
        for rid, version, request in posts:
            sent = time.time()
            status, _, _ = http.exchange(request)
            if status != 201:
                failures += 1
                continue
            answered, key = http.arrived, (rid, version)
            hub.wait(lambda key=key: key in subscriber.changes or subscriber.closed, time.monotonic() + GRAIN_WAIT)
            if key in subscriber.changes:
                latencies.append(subscriber.changes[key] - answered)
                from_sent.append(subscriber.changes[key] - sent)
            else:
                lost += 1
    finally:
        hub.close()
    latencies.sort()
    from_sent.sort()
    return {"from_sent_p50_ms": ms(percentile(from_sent, 0.50)), "from_sent_p99_ms": ms(percentile(from_sent, 0.99)),"pairs": len(latencies), "lost": lost, "failures": failures, "closed": subscriber.closed
            if subscriber.closed != "closed by us" else None,
            "p50_ms": ms(percentile(latencies, 0.50)), "p99_ms": ms(percentile(latencies, 0.99)),
            "max_ms": ms(latencies[-1] if latencies else None)}


def run_cost(opts: CostOptions) -> dict:
    rows = []
    server = start_registry(MEMBER_CMD, 60.0, None)
    try:
        rows.append(measure("memory", [server], None, opts))
    finally:
        stop_registry(server)
    for count in opts.members:
        cluster = Cluster.start_etcd(3)
        try:
            for _ in range(count):
                cluster.add_member()
            rows.append(measure(f"etcd, {count} member{'s' if count > 1 else ''}", list(cluster.members), cluster,
                                opts))
        finally:
            cluster.stop()
    return {"scenario": "cost", "options": vars(opts).copy(), "rows": rows}
