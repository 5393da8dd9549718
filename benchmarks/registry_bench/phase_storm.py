"""The storm phase (issue 13, goal 5): while --storm-nodes Nodes heartbeat every 5 s, one big Node registers
--storm-resources resources as fast as the registry takes them, over --storm-connections connections. What the
others' heartbeats waited meanwhile, whether any Node expired, and the registry's longest reactor turn."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any

from .harness import HEARTBEAT_INTERVAL, Context, KeepAlive, figures, measured, run_pool
from .heartbeats import Heartbeats, heartbeat_details, heartbeat_row, quiet_baseline
from .http import Connection, ProtocolError, Recorder, build_request
from .phase_register import hold_nodes, sweep_alive
from .query_api import count_nodes
from .server import API, longest_reactor_turn_ms
from .synthetic import big_node

STORM_NODE_BASE = 800_000  # label numbers of the big Nodes: far from the population's and the websocket phase's
REACTOR_TURN_TARGET_MS = 50.0  # issue 13, goal 5: "no single reactor turn takes more than ~50 ms"
REACTOR_LOG_WAIT = 15.0  # seconds after the storm to wait for the registry's next reactor line, if it logs them
AFTER_STORM = 2.0  # seconds the heartbeats go on after the storm, so that those due during it are answered


def reactor_turn_since(ctx: Context, log_mark: int, storm_end: float) -> float | None:
    """The longest reactor turn the registry logged from `log_mark` on. A registry that logs it now and then may not
    have logged since the storm: if it logged any such line before, wait (REACTOR_LOG_WAIT s at most) for one."""
    seen_before = longest_reactor_turn_ms(ctx.server.log_text() or "") is not None
    while (turn := longest_reactor_turn_ms(ctx.server.log_text(log_mark) or "")) is None and seen_before \
            and time.monotonic() < storm_end + REACTOR_LOG_WAIT:
        time.sleep(0.5)
    return turn


def phase_storm(ctx: Context) -> dict:
    """A baseline interval of heartbeats only (storm-hb-base), then the big Node's registration (storm) and the
    heartbeats due while it ran (storm-hb); the big Node is deleted at the end (its DELETE timed, not judged)."""
    opts = ctx.storm
    details: dict[str, Any] = {"options": dataclasses.asdict(opts)}
    rows: dict[str, dict] = {}
    heartbeats: Heartbeats | None = None
    http = Connection(ctx.server.host, ctx.server.port, ctx.request_timeout)
    stages = big_node(STORM_NODE_BASE + len(ctx.population), time.time(), opts.resources)
    big_id = stages[0][0][1]["id"]
    # Built before the clock starts, so the storm measures the registry, not json.dumps.
    requests = [[build_request("POST", API + "/resource", ctx.host_header,
                               json.dumps({"type": kind, "data": data}, separators=(",", ":")).encode())
                 for kind, data in stage] for stage in stages]
    big_beat = build_request("POST", f"{API}/health/nodes/{big_id}", ctx.host_header)
    registered_big = False
    try:
        held, details["setup"] = hold_nodes(ctx, opts.nodes, "storm")
        alive, _ = sweep_alive(ctx, held)
        details["nodes_held"] = len(held)
        heartbeats = Heartbeats(ctx, alive, lambda: sweep_alive(ctx, alive))
        if heartbeats.started is None:
            raise ProtocolError("the heartbeat process did not start")
        details.update(quiet_baseline(ctx, heartbeats))
        print(f"storm: one Node registers {opts.resources} resources over {opts.connections} connections while "
              f"{len(alive)} Nodes heartbeat ...", file=sys.stderr)
        log_mark = ctx.server.log_size()
        keepalive = KeepAlive(HEARTBEAT_INTERVAL)  # the big Node's own heartbeats, should its registration be slow
        pool = dataclasses.replace(ctx, concurrency=opts.connections)

        def post(conn: Connection, request: bytes, rec: dict[str, Recorder]) -> None:
            if (due := keepalive.due()) is not None:
                rec["keepalive"].call(conn, big_beat, 200)
                keepalive.touch(due)
            rec["register"].call(conn, request, 201)

        merged = {"register": Recorder(), "keepalive": Recorder()}
        storm_start, server_cpu, client_cpu, timed_out = time.monotonic(), 0.0, 0.0, False
        for number, stage in enumerate(requests):
            recorders, _, cut, server, client = measured(pool, lambda stage=stage: run_pool(
                pool, stage, post, ("register", "keepalive")))
            for kind, recorder in recorders.items():
                merged[kind].merge(recorder)
            server_cpu = None if server is None or server_cpu is None else server_cpu + server
            client_cpu += client
            timed_out |= cut
            if number == 0:
                registered_big = recorders["register"].statuses.get(201, 0) == 1
                if not registered_big:
                    break
                keepalive.touch(big_id)
        storm_end = time.monotonic()
        # The heartbeats due during the storm, once answered; then what the registry logged meanwhile.
        time.sleep(AFTER_STORM)
        turn = reactor_turn_since(ctx, log_mark, storm_end)
        stored = merged["register"].statuses.get(201, 0)
        rows["storm"] = figures("storm", merged["register"], storm_end - storm_start, server_cpu, client_cpu,
                                timed_out, None, resources=opts.resources, resources_stored=stored,
                                registration_s=storm_end - storm_start, connections=opts.connections,
                                stages=[len(stage) for stage in stages],
                                big_node_heartbeats=len(merged["keepalive"].latencies),
                                reactor_longest_turn_ms=turn, target_reactor_turn_ms=REACTOR_TURN_TARGET_MS)
        rows["storm"]["unexpected_status"] += merged["keepalive"].unexpected
        rows["storm"]["transport_errors"] += merged["keepalive"].errors
        details["window"] = (storm_start, storm_end)
        details["nodes_listed_after"] = count_nodes(ctx, http)
        details["nodes_expected_after"] = details.get("nodes_held", 0) + registered_big
        details["wrong_results"] = int(details["nodes_listed_after"] != details["nodes_expected_after"])
        if registered_big:
            # Its deletion removes every resource in one request, while the others still heartbeat: timed, and the
            # longest reactor turn the registry logs next (the heartbeats' turns are short, so it is the DELETE's).
            delete_mark = ctx.server.log_size()
            start = time.perf_counter()
            status, _, _ = http.exchange(build_request("DELETE", f"{API}/resource/nodes/{big_id}", ctx.host_header))
            details["big_node_delete_ms"] = (time.perf_counter() - start) * 1000
            details["big_node_delete_status"] = status
            details["big_node_delete_turn_ms"] = reactor_turn_since(ctx, delete_mark, time.monotonic())
    except (OSError, ProtocolError) as e:
        details["error"] = f"{type(e).__name__}: {e}"
    finally:
        measured_hb = heartbeats.stop() if heartbeats is not None else None
        http.close()
    if measured_hb is not None:
        samples = measured_hb["samples"]
        details.update(heartbeat_details(measured_hb, heartbeats))
        if "baseline" in details:
            rows["storm-hb-base"] = heartbeat_row("storm-hb-base", samples, *details["baseline"],
                                                  details["baseline_server_cpu_ms"], False)
        if "window" in details:
            rows["storm-hb"] = heartbeat_row("storm-hb", samples, *details["window"], None, True)
        details["expired_nodes"] = len({s[4] for s in samples if s[3] == 404})
    return {"phase": "storm", "rows": rows, "timed_out": time.monotonic() > ctx.deadline, **details}
