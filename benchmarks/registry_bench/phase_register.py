"""The register and heartbeat phases: synthetic Nodes POSTed over the pool, parents first, kept alive by
heartbeats; then every registered Node heartbeated, round after round."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from .harness import Context, KeepAlive, figures, measured, run_pool
from .http import Connection, Recorder, build_request
from .server import API
from .synthetic import synthetic_node


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
    """Registers `ctx.nodes` new synthetic Nodes, ten resources each (see `register_nodes`)."""
    nodes = new_nodes(ctx, ctx.nodes)
    recorders, wall, timed_out, server_cpu, client_cpu, posts, accepted = register_nodes(ctx, nodes, ctx.registered)
    beats_sent = len(recorders["keepalive"].latencies) + recorders["keepalive"].errors
    result = figures("register", recorders["register"], wall, server_cpu, client_cpu, timed_out, 0.8,
                     nodes=len(nodes), resources=posts,
                     nodes_accepted=len(accepted),
                     keepalive_heartbeats=beats_sent,
                     keepalive_non_2xx=sum(v for k, v in recorders["keepalive"].statuses.items() if not 200 <= k < 300),
                     keepalive_transport_errors=recorders["keepalive"].errors)
    # The keep-alive heartbeats' server CPU stays in the phase's figure, which is divided by the registrations alone:
    # a slight overstatement of a registration's cost (see README). Their failures count like any other.
    result["unexpected_status"] += recorders["keepalive"].unexpected
    result["transport_errors"] += recorders["keepalive"].errors
    result["error_samples"] += recorders["keepalive"].error_samples[:5 - len(result["error_samples"])]
    return result


def phase_heartbeat(ctx: Context) -> dict:
    """Heartbeats every registered Node `rounds` times: round after round, each round over all Nodes."""
    if not ctx.registered:
        return figures("heartbeat", Recorder(), 0.0, None, 0.0, False, 0.3,
                       skipped="no registered nodes (run the register phase first)")
    beats = [build_request("POST", f"{API}/health/nodes/{nid}", ctx.host_header) for nid in ctx.registered]
    units = [beat for _ in range(ctx.rounds) for beat in beats]

    def heartbeat(conn: Connection, request: bytes, rec: dict[str, Recorder]) -> None:
        rec["heartbeat"].call(conn, request, 200)

    recorders, wall, timed_out, server_cpu, client_cpu = measured(
        ctx, lambda: run_pool(ctx, units, heartbeat, ("heartbeat",)))
    return figures("heartbeat", recorders["heartbeat"], wall, server_cpu, client_cpu, timed_out, 0.3,
                   nodes=len(beats), rounds=ctx.rounds)
