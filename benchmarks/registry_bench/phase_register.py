"""The register and heartbeat phases: synthetic Nodes POSTed over the pool, parents first, kept alive by
heartbeats; then every registered Node heartbeated, round after round."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence

from .harness import Context, KeepAlive, figures, measured, run_pool
from .http import Connection, Recorder, build_request
from .server import API
from .synthetic import NODE_LAYOUT, synthetic_node

# Issue 13's targets: server CPU per registration and per heartbeat at 1,000 Nodes and 16 keep-alive connections
# (goal 3), and RSS growth per registered resource at 100,000 resources (goal 1; nmos-cpp: 2,890-3,250 bytes).
REGISTRATION_TARGET_MS = 0.40
HEARTBEAT_TARGET_MS = 0.20
RSS_PER_RESOURCE_TARGET = 1500
RSS_TARGET_AT_RESOURCES = 100_000


def new_nodes(ctx: Context, count: int) -> list[list[tuple[str, dict]]]:
    """`count` synthetic Nodes never handed out before (labels continue the numbering), added to the population."""
    now, start = time.time(), len(ctx.population)
    ctx.population += [synthetic_node(index, now) for index in range(start, start + count)]
    return ctx.population[start:]


def register_nodes(ctx: Context, nodes: Sequence[list[tuple[str, dict]]], alive: Sequence[str] = ()) \
        -> tuple[dict[str, Recorder], float, bool, float | None, float, int, list[str]]:
    """POSTs the resources of `nodes`, parents first per Node, Nodes spread over the connections.

    Keeps every accepted Node, and every Node of `alive` (registered earlier), alive with keep-alive heartbeats.
    Returns the recorders ("register", "keepalive"), wall, timed-out flag, server and client CPU ms, the number of
    POSTs built and the ids of the Nodes accepted; adds those to `ctx.registered`."""
    post = API + "/resource"
    # Built before the clock starts, so the phase measures the server, not json.dumps.
    units = [(node[0][1]["id"], [build_request("POST", post, ctx.host_header,
                                               json.dumps({"type": kind, "data": data}, separators=(",", ":")).encode())
                                 for kind, data in node]) for node in nodes]
    beats = {nid: build_request("POST", f"{API}/health/nodes/{nid}", ctx.host_header)
             for nid in [*alive, *(nid for nid, _ in units)]}
    keepalive = KeepAlive(ctx.keepalive)
    overdue = time.monotonic() - ctx.keepalive  # when they were last heard is not known here: heartbeat them first
    for node_id in alive:
        keepalive.touch(node_id, at=overdue)
    accepted: list[str] = []

    def register_node(conn: Connection, unit: tuple[str, list[bytes]], rec: dict[str, Recorder]) -> None:
        while (due := keepalive.due()) is not None:
            rec["keepalive"].call(conn, beats[due], 200)
            keepalive.touch(due)
        node_id, requests = unit
        for position, request in enumerate(requests):
            answer = rec["register"].call(conn, request, 201)
            if position == 0 and answer and answer[0] == 201:  # the node itself: IS-04 counts it as a heartbeat
                keepalive.touch(node_id)
                accepted.append(node_id)

    recorders, wall, timed_out, server_cpu, client_cpu = measured(
        ctx, lambda: run_pool(ctx, units, register_node, ("register", "keepalive")))
    ctx.registered += accepted
    return recorders, wall, timed_out, server_cpu, client_cpu, sum(len(requests) for _, requests in units), accepted


def phase_register(ctx: Context) -> dict:
    """Registers `ctx.nodes` new synthetic Nodes, ten resources each (see `register_nodes`), and what they cost the
    registry in RSS: its growth over the phase per resource stored (issue 13, goal 1)."""
    nodes = new_nodes(ctx, ctx.nodes)
    rss_before = ctx.server.rss_kib()  # the registry is idle here: the requests are built in register_nodes
    recorders, wall, timed_out, server_cpu, client_cpu, posts, accepted = register_nodes(ctx, nodes, ctx.registered)
    ctx.server.settle()  # the last answers' garbage and the reactor's leftovers, before RSS is read
    rss_after = ctx.server.rss_kib()
    stored = recorders["register"].statuses.get(201, 0)
    beats_sent = len(recorders["keepalive"].latencies) + recorders["keepalive"].errors
    result = figures("register", recorders["register"], wall, server_cpu, client_cpu, timed_out,
                     REGISTRATION_TARGET_MS,
                     nodes=len(nodes), resources=posts,
                     nodes_accepted=len(accepted),
                     keepalive_heartbeats=beats_sent,
                     keepalive_non_2xx=sum(v for k, v in recorders["keepalive"].statuses.items() if not 200 <= k < 300),
                     keepalive_transport_errors=recorders["keepalive"].errors,
                     resources_stored=stored, resources_held=len(ctx.registered) * len(NODE_LAYOUT),
                     server_rss_kib_before=rss_before, server_rss_kib_registered=rss_after,
                     server_rss_bytes_per_resource=(rss_after - rss_before) * 1024 / stored
                     if None not in (rss_before, rss_after) and stored else None,
                     target_rss_bytes_per_resource=RSS_PER_RESOURCE_TARGET,
                     server_peak_rss_kib=ctx.server.peak_rss_kib())
    # The keep-alive heartbeats' server CPU stays in the phase's figure, which is divided by the registrations alone:
    # a slight overstatement of a registration's cost (see README). Their failures count like any other.
    result["unexpected_status"] += recorders["keepalive"].unexpected
    result["transport_errors"] += recorders["keepalive"].errors
    result["error_samples"] += recorders["keepalive"].error_samples[:5 - len(result["error_samples"])]
    return result


def phase_heartbeat(ctx: Context) -> dict:
    """Heartbeats every registered Node `rounds` times: round after round, each round over all Nodes."""
    if not ctx.registered:
        return figures("heartbeat", Recorder(), 0.0, None, 0.0, False, HEARTBEAT_TARGET_MS,
                       skipped="no registered nodes (run the register phase first)")
    beats = [build_request("POST", f"{API}/health/nodes/{nid}", ctx.host_header) for nid in ctx.registered]
    units = [beat for _ in range(ctx.rounds) for beat in beats]

    def heartbeat(conn: Connection, request: bytes, rec: dict[str, Recorder]) -> None:
        rec["heartbeat"].call(conn, request, 200)

    recorders, wall, timed_out, server_cpu, client_cpu = measured(
        ctx, lambda: run_pool(ctx, units, heartbeat, ("heartbeat",)))
    return figures("heartbeat", recorders["heartbeat"], wall, server_cpu, client_cpu, timed_out, HEARTBEAT_TARGET_MS,
                   nodes=len(beats), rounds=ctx.rounds)


def sweep_alive(ctx: Context, node_ids: Sequence[str]) -> tuple[list[str], Recorder]:
    """Heartbeats every Node once over the pool; the ones still registered (not answered 404)."""
    gone: set[str] = set()
    units = [(nid, build_request("POST", f"{API}/health/nodes/{nid}", ctx.host_header)) for nid in node_ids]

    def beat(conn: Connection, unit: tuple[str, bytes], rec: dict[str, Recorder]) -> None:
        answer = rec["keepalive"].call(conn, unit[1], 200)
        if answer is not None and answer[0] == 404:
            gone.add(unit[0])

    recorders, _, _ = run_pool(ctx, units, beat, ("keepalive",))
    return [nid for nid in node_ids if nid not in gone], recorders["keepalive"]


def hold_nodes(ctx: Context, count: int, phase: str) -> tuple[list[str], dict]:
    """The Nodes of earlier phases that are still registered, plus new ones (registered unreported, kept alive) up
    to `count`: their ids, and what it took (JSON-ready)."""
    held, sweep = sweep_alive(ctx, ctx.registered) if ctx.registered else ([], Recorder())
    setup: dict = {"earlier_nodes": len(ctx.registered), "earlier_nodes_gone": len(ctx.registered) - len(held),
                   "sweep_failures": sweep.unexpected + sweep.errors}
    if (missing := count - len(held)) > 0:
        print(f"registering {missing} nodes for the {phase} phase (not reported) ...", file=sys.stderr)
        recorders, wall, _, _, _, posts, accepted = register_nodes(ctx, new_nodes(ctx, missing), held)
        registered = len(held) + len(accepted)
        # Those that expired meanwhile (a registry too slow for the keep-alive heartbeats) are not held: the phase's
        # own figures must not count them, but the setup's failures do, and the report says how many there were.
        held, _ = sweep_alive(ctx, held + accepted)
        setup |= {"nodes_registered": len(accepted), "posts": posts, "wall_s": wall,
                  "expired_during_setup": registered - len(held),
                  "failures": recorders["register"].unexpected + recorders["register"].errors
                  + recorders["keepalive"].unexpected + recorders["keepalive"].errors,
                  "error_samples": recorders["register"].error_samples + recorders["keepalive"].error_samples}
    return held, setup
