"""The websocket phase: grain latency at 1 and at S subscribers (ws-1, ws-S), then the load scenario (ws-load),
over a population of Nodes that the heartbeat process keeps alive, and the heartbeats' own figures (ws-hb-*)."""

from __future__ import annotations

import collections
import json
import sys
import time
import uuid
from typing import Any

from .harness import Context, figures, ms
from .heartbeats import Heartbeats, heartbeat_details, heartbeat_row, quiet_baseline
from .http import ProtocolError, Recorder, build_request, percentile
from .phase_register import hold_nodes, sweep_alive
from .query_api import count_nodes
from .server import API, listen_overflows
from .synthetic import synthetic_node, tai_version
from .ws_client import KIND, Hub, Subscriber, TimedConnection, subscribe
from .ws_load import SCENARIO_NODE_BASE, WsState, ws_load

# The websocket phase (benchmarks/README.md): how long a registration takes to reach 1 and S subscribers, then S
# subscribers connecting at once to a registry of --ws-nodes Nodes that keep heartbeating while changes flow.

WS_P99_TARGET_MS = 25.0  # issue 4: nmos-cpp's p99 at 50 subscribers; ours must be at most that
GRAIN_WAIT = 5.0  # seconds a latency row waits for a registration's grain on every socket before counting it lost


def ws_latency(ctx: Context, state: WsState, http: TimedConnection, name: str, count: int,
               posts: list[tuple[str, str, bytes]], target_ms: float | None) -> dict:
    """`count` subscribers of /senders, then each of `posts` (a new Sender) registered, one at a time: the time from
    the kernel's receipt of its 201 to its receipt of the grain holding that Sender, on every socket."""
    statuses: collections.Counter = collections.Counter()
    paths = []
    for _ in range(count):
        status, path = subscribe(http, ctx, "senders")
        statuses[status] += 1
        paths.append(path)
    hub, subscribers = Hub(), []
    expect = set(state.known["sender"])
    rec, latencies, from_sent, lost, timed_out = Recorder(), [], [], 0, False
    wall = 0.0
    server_cpu = client_cpu = None
    try:
        first = time.time()
        for index, path in enumerate(paths):
            subscribers.append(Subscriber(index, "senders", path, ctx.server, expect, ctx.request_timeout))
            hub.add(subscribers[-1])
        synced = hub.wait(lambda: all(s.sync_done is not None or s.closed for s in subscribers),
                          min(ctx.deadline, time.monotonic() + ctx.ws.sync_timeout))
        sync_s = max(s.sync_done for s in subscribers) - first if synced and not any(s.closed for s in subscribers) \
            else None
        window_start = time.monotonic()
        server_before, client_before, start = ctx.server.cpu_ms(), time.process_time(), time.perf_counter()
        for rid, version, request in posts:
            if time.monotonic() > ctx.deadline:
                timed_out = True
                break
            sent = time.time()
            answer = rec.call(http, request, 201)
            if answer is None or answer[0] != 201:
                continue
            answered, key = http.arrived, (rid, version)
            state.known["sender"].add(rid)
            hub.wait(lambda key=key: all(key in s.changes or s.closed for s in subscribers),
                     time.monotonic() + GRAIN_WAIT)
            for s in subscribers:
                if key in s.changes:
                    latencies.append(s.changes[key] - answered)
                    from_sent.append(s.changes[key] - sent)
                else:
                    lost += 1
        wall = time.perf_counter() - start
        server_after, client_after = ctx.server.cpu_ms(), time.process_time()
        window_end = time.monotonic()
        if server_before is not None and server_after is not None:
            server_cpu = server_after - server_before
        client_cpu = (client_after - client_before) * 1000
    finally:
        hub.close()
    http_figures = figures(name, rec, wall, server_cpu, client_cpu or 0.0, timed_out, None)
    latencies.sort()
    from_sent.sort()
    closed = [f"subscriber {s.index}: {s.closed}" for s in subscribers if s.closed and s.closed != "closed by us"]
    result = http_figures | {
        "from_sent_p50_ms": ms(percentile(from_sent, 0.50)), "from_sent_p99_ms": ms(percentile(from_sent, 0.99)),
        "from_sent_max_ms": ms(from_sent[-1] if from_sent else None),
        "latency_p50_ms": ms(percentile(latencies, 0.50)), "latency_p99_ms": ms(percentile(latencies, 0.99)),
        "latency_max_ms": ms(latencies[-1] if latencies else None),
        "latency_min_ms": ms(latencies[0] if latencies else None),
        "registration_http_p50_ms": http_figures["latency_p50_ms"],
        "registration_http_p99_ms": http_figures["latency_p99_ms"],
        "target_latency_ms": target_ms, "target_metric": "p99",
        "subscribers": count, "subscriptions_created": statuses[201], "subscriptions_reused": statuses[200],
        "pairs": len(latencies), "lost_notifications": lost, "wrong_results": lost + len(closed),
        "sync_events_per_subscriber": len(expect), "sync_s": sync_s,
        "duplicates": sum(s.duplicates for s in subscribers), "malformed": sum(s.malformed for s in subscribers),
        "client_read_lag_max_ms": max((s.read_lag for s in subscribers), default=0.0) * 1000,
        "closed_early": closed, "window": (window_start, window_end) if wall else None,
    }
    result["error_samples"] += closed[:5 - len(result["error_samples"])]
    return result


def phase_websocket(ctx: Context) -> dict:
    """Grain latency at 1 and at S subscribers (ws-1, ws-S), then S subscribers connecting at once at --ws-nodes
    Nodes heartbeating every 5 s while changes flow (ws-load), with the heartbeats' figures (ws-hb-*)."""
    opts = ctx.ws
    rows: dict[str, dict] = {}
    details: dict[str, Any] = {"options": {k: v for k, v in vars(opts).items()}}
    http = TimedConnection(ctx.server.host, ctx.server.port, ctx.request_timeout)
    heartbeats: Heartbeats | None = None
    latency_node: str | None = None
    timed_out = False
    overflows = listen_overflows()
    try:
        # 1. The population: the Nodes of earlier phases still registered, plus new ones up to --ws-nodes.
        held, details["setup"] = hold_nodes(ctx, opts.nodes, "websocket")
        by_id = {node[0][1]["id"]: node for node in ctx.population}
        state = WsState({kind: set() for kind in KIND.values()}, {}, {kind: [] for kind in KIND.values()})
        for nid in held:
            for kind, data in by_id[nid]:
                state.known[kind].add(data["id"])
                state.data[data["id"]] = (kind, data)
                state.modifiable[kind].append(data["id"])
        # 2. The latency rows' Node: node, device, video source and flow; its Senders are registered by the rows.
        template = synthetic_node(SCENARIO_NODE_BASE - 1, time.time())
        parents = [template[0], template[1], template[2], template[4]]  # node, device, video source, video flow
        for kind, data in parents:
            body = json.dumps({"type": kind, "data": data}, separators=(",", ":")).encode()
            status, _, reply = http.exchange(build_request("POST", API + "/resource", ctx.host_header, body))
            if status != 201:
                raise ProtocolError(f"registering the latency rows' {kind} answered {status}: {reply[:200]!r}")
            state.known[kind].add(data["id"])
        latency_node = template[0][1]["id"]
        sender = template[6][1]
        posts = []
        now = time.time()
        for k in range(2 * opts.registrations):
            data = sender | {"id": str(uuid.uuid4()), "label": f"bench-sender-latency-{k:06d}",
                             "version": tai_version(now)}
            posts.append((data["id"], data["version"], build_request(
                "POST", API + "/resource", ctx.host_header,
                json.dumps({"type": "sender", "data": data}, separators=(",", ":")).encode())))
        # 3. Every Node heartbeated once, then every 5 s by the child process, phases spread over the interval.
        alive, _ = sweep_alive(ctx, [*held, latency_node])
        details["nodes_held"] = len(held)
        details["resources_held"] = sum(len(ids) for ids in state.known.values())
        heartbeats = Heartbeats(ctx, alive, lambda: sweep_alive(ctx, alive))
        http.close()  # idle while the connections opened: the registry closes an idle one after 60 s
        if heartbeats.started is None:
            raise ProtocolError("the heartbeat process did not start")
        # 4. A quiet interval, heartbeats only, for their baseline and their server CPU.
        details.update(quiet_baseline(ctx, heartbeats))
        # 5. Latency at 1, then at S subscribers; 6. the load scenario.
        if opts.latency_rows:
            print("websocket: latency with 1 subscriber ...", file=sys.stderr)
            rows["ws-1"] = ws_latency(ctx, state, http, "ws-1", 1, posts[:opts.registrations], None)
            print(f"websocket: latency with {opts.subscribers} subscribers ...", file=sys.stderr)
            rows[f"ws-{opts.subscribers}"] = ws_latency(ctx, state, http, f"ws-{opts.subscribers}",
                                                        opts.subscribers, posts[opts.registrations:], WS_P99_TARGET_MS)
        if held:
            print(f"websocket: {opts.subscribers} subscribers connecting at once to {len(held)} nodes ...",
                  file=sys.stderr)
            rows["ws-load"] = ws_load(ctx, state, http, heartbeats.process.pid)
            details["nodes_listed_after"] = count_nodes(ctx, http)
            details["nodes_expected_after"] = len(held) + 1
    except (OSError, ProtocolError) as e:
        details["error"] = f"{type(e).__name__}: {e}"
    finally:
        measured_hb = heartbeats.stop() if heartbeats is not None else None
        if latency_node is not None:
            try:
                http.exchange(build_request("DELETE", f"{API}/resource/nodes/{latency_node}", ctx.host_header))
            except (OSError, ProtocolError):
                pass
        http.close()
    timed_out = time.monotonic() > ctx.deadline
    if overflows is not None and (after := listen_overflows()) is not None:
        details["listen_overflows"] = after - overflows
    # The heartbeats' rows, from the child's samples.
    if measured_hb is not None:
        samples = measured_hb["samples"]
        details.update(heartbeat_details(measured_hb, heartbeats))
        start, end = details["baseline"]
        windows = {"ws-hb-base": (start, end, details.get("baseline_server_cpu_ms"))}
        if "ws-load" in rows:
            load_start, load_end = rows["ws-load"]["window"]
            windows["ws-hb-load"] = (load_start, load_end, None)
        per_beat = None
        for name, (start, end, cpu) in windows.items():
            rows[name] = heartbeat_row(name, samples, start, end, cpu, name == "ws-hb-load")
            if name == "ws-hb-base" and cpu is not None and rows[name]["requests"]:
                per_beat = cpu / rows[name]["requests"]
        details["expired_nodes"] = len({s[4] for s in samples if s[3] == 404})
        # Server CPU per registration without the background heartbeats, at the baseline's rate.
        for name, r in rows.items():
            if name.startswith("ws-") and r.get("window") and name != "ws-load" and not name.startswith("ws-hb"):
                beats = sum(r["window"][0] <= s[1] < r["window"][1] for s in samples)
                r["heartbeats_in_window"] = beats
                if per_beat is not None and r["server_cpu_ms"] is not None and r["requests"]:
                    r["server_cpu_ms_per_request_net"] = (r["server_cpu_ms"] - beats * per_beat) / r["requests"]
        details["heartbeat_server_cpu_ms"] = per_beat
    return {"phase": "websocket", "rows": rows, "timed_out": timed_out, **details}
