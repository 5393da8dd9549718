"""The command line: the options, a registry started (or one already running), the phases run in order, the
printed report and the JSON; the exit status."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __doc__ as OVERVIEW
from .harness import HEARTBEAT_INTERVAL, Context, StormOptions, WsOptions
from .phase_query import phase_query
from .phase_register import phase_heartbeat, phase_register
from .phase_storm import phase_storm
from .phase_websocket import phase_websocket
from .query_api import V10_COLLECTIONS
from .report import failed, report
from .server import (
    CLEAN_EXIT,
    DEFAULT_REGISTRY_CMD,
    Server,
    longest_reactor_turn_ms,
    machine_busy_ms,
    start_registry,
    stop_registry,
    wait_until_up,
)
from .synthetic import DEFAULT_SCHEMAS, check_schemas

PHASES: dict[str, Callable[[Context], dict]] = {"register": phase_register, "heartbeat": phase_heartbeat,
                                                 "query": phase_query, "websocket": phase_websocket,
                                                 "storm": phase_storm}
# Phases that register the population first (unreported) if `register` is not asked. The query and websocket phases
# register what they need themselves, and so does the storm phase.
NEEDS_REGISTERED = {"heartbeat"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=OVERVIEW.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--nodes", "-n", type=int, default=1000, help="synthetic Nodes (10 resources each)")
    p.add_argument("--concurrency", "-c", type=int, default=8, help="keep-alive HTTP/1.1 connections, one thread each")
    p.add_argument("--rounds", type=int, default=5, help="heartbeats per Node in the heartbeat phase")
    p.add_argument("--phases", default="register,heartbeat", help=f"comma-separated, from: {', '.join(PHASES)}")
    p.add_argument("--json", metavar="FILE", type=Path, help="also write every figure to FILE as JSON")
    p.add_argument("--url", help="target an already running registry (http://127.0.0.1:PORT) instead of starting one")
    p.add_argument("--pid", type=int, help="with --url: the registry's PID, so its CPU and RSS can be read")
    p.add_argument("--registry-cmd", default=DEFAULT_REGISTRY_CMD,
                   help="command that starts the registry; {port} is replaced by a free loopback port")
    p.add_argument("--registry-log", type=Path,
                   help="keep the started registry's output in this file; with --url, the running registry's log, "
                        "read for its longest reactor turn")
    p.add_argument("--startup-timeout", type=float, default=60.0, help="seconds to wait for the registry to answer")
    p.add_argument("--timeout", type=float, default=900.0, help="overall limit in seconds for all phases")
    p.add_argument("--request-timeout", type=float, default=30.0, help="socket timeout in seconds per request")
    p.add_argument("--query-resources", type=int, default=50_000,
                   help="query phase: resources registered before it measures (Nodes are added 10 resources each)")
    p.add_argument("--query-requests", type=int, default=1000,
                   help="query phase: label queries, and id lookups, each for a different Sender")
    p.add_argument("--query-repeats", type=int, default=10,
                   help="query phase: paging walks per limit, warm GETs of the largest v1.0 list, warm v1.0 sweeps")
    p.add_argument("--ws-nodes", type=int, default=3000,
                   help="websocket phase: Nodes registered (10 resources each, heartbeating) for the load scenario "
                        "(0: latency rows only)")
    p.add_argument("--ws-subscribers", type=int, default=50,
                   help="websocket phase: subscribers of the second latency row and of the load scenario")
    p.add_argument("--ws-registrations", type=int, default=500,
                   help="websocket phase: Senders registered one at a time in each latency row")
    p.add_argument("--ws-rate-ms", type=int, default=0, help="websocket phase: max_update_rate_ms of every subscription")
    p.add_argument("--ws-paths", default=",".join(V10_COLLECTIONS),
                   help="websocket phase: collections the load scenario's subscribers take in turn")
    p.add_argument("--ws-change-rate", type=float, default=49.0,
                   help="websocket phase: change requests per second during the load scenario")
    p.add_argument("--ws-after", type=float, default=10.0,
                   help="websocket phase: seconds changes go on after the last subscriber has its initial state")
    p.add_argument("--ws-sync-timeout", type=float, default=300.0,
                   help="websocket phase: seconds the initial state may take before the scenario gives up")
    p.add_argument("--ws-heartbeat-connections", type=int, default=0,
                   help="websocket phase: connections of the process that heartbeats every Node (0: one per Node, "
                        "as real Nodes have)")
    p.add_argument("--ws-distinct", action="store_true",
                   help="websocket phase: give each subscriber a subscription of its own (an RQL filter every "
                        "resource matches) instead of identical POSTs, which the registry answers with one subscription")
    p.add_argument("--ws-no-latency", action="store_true",
                   help="websocket phase: leave out the latency rows (ws-1, ws-S): only the load scenario")
    p.add_argument("--storm-nodes", type=int, default=3000,
                   help="storm phase: Nodes heartbeating every 5 s while the big Node registers")
    p.add_argument("--storm-resources", type=int, default=2500,
                   help="storm phase: resources of the big Node, itself included (1 Device per 100)")
    p.add_argument("--storm-connections", type=int, default=8,
                   help="storm phase: connections the big Node registers over")
    p.add_argument("--keepalive", type=float, default=HEARTBEAT_INTERVAL,
                   help="heartbeat each registered Node this often during registration (0: never)")
    p.add_argument("--check-schemas", action="store_true",
                   help="only validate the synthetic payloads against the official schemas, then exit")
    p.add_argument("--schemas", type=Path, default=DEFAULT_SCHEMAS, help="folder of the official IS-04 v1.3 schemas")
    args = p.parse_args(argv)
    args.phases = [name.strip() for name in args.phases.split(",") if name.strip()]
    if unknown := [name for name in args.phases if name not in PHASES]:
        p.error(f"unknown phase(s) {', '.join(unknown)}; known: {', '.join(PHASES)}")
    if min(args.nodes, args.concurrency, args.rounds, args.query_resources, args.query_requests,
           args.query_repeats) < 1:
        p.error("--nodes, --concurrency, --rounds and the --query-* counts must be at least 1")
    if args.pid is not None and not args.url:
        p.error("--pid goes with --url")
    paths = tuple(name.strip() for name in args.ws_paths.split(",") if name.strip())
    if not paths or set(paths) - set(V10_COLLECTIONS):
        p.error(f"--ws-paths takes names from {', '.join(V10_COLLECTIONS)}")
    if min(args.ws_subscribers, args.ws_registrations) < 1 or args.ws_nodes < 0 or args.ws_heartbeat_connections < 0 \
            or args.ws_rate_ms < 0 or args.ws_change_rate <= 0 or args.ws_after < 0 or args.ws_sync_timeout <= 0:
        p.error("the --ws-* counts, rates and times must be positive (--ws-nodes, --ws-rate-ms and --ws-after may "
                "be 0)")
    if args.storm_nodes < 0 or args.storm_resources < 3 or args.storm_connections < 1:
        p.error("--storm-nodes must be at least 0, --storm-resources at least 3, --storm-connections at least 1")
    args.storm = StormOptions(args.storm_nodes, args.storm_resources, args.storm_connections)
    args.ws = WsOptions(args.ws_subscribers, args.ws_registrations, args.ws_nodes, args.ws_rate_ms,
                        args.ws_change_rate, args.ws_after, args.ws_sync_timeout, paths,
                        args.ws_heartbeat_connections, args.ws_distinct, not args.ws_no_latency)
    return args


def target_from_url(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"--url must be http://HOST:PORT, not {url!r}")
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") and not parts.hostname.startswith("127."):
        # The machine's rule: benchmarks send traffic only to loopback.
        raise SystemExit(f"--url must point at loopback, not {parts.hostname}")
    return parts.hostname, parts.port or 80


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check_schemas:
        return check_schemas(args.schemas, min(args.nodes, 20))

    if args.url:
        host, port = target_from_url(args.url)
        server = Server(host, port, pid=args.pid, log_path=args.registry_log)  # a log to read, if given
        if problem := wait_until_up(server, time.monotonic() + args.startup_timeout):
            print(f"{args.url}: {problem}", file=sys.stderr)
            return 2
        registry = args.url
    else:
        try:
            server = start_registry(args.registry_cmd, args.startup_timeout, args.registry_log)
        except (RuntimeError, OSError) as e:
            print(f"could not start the registry: {e}", file=sys.stderr)
            return 2
        registry = f"{args.registry_cmd.format(port=server.port)}"

    # Goal 2's figure: the empty registry's RSS once it answers and has stopped using CPU (imports done, caches
    # warmed by the first answer), not at its first answer.
    settled = server.settle(limit=5.0)
    idle_rss = server.rss_kib()
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "nodes": args.nodes, "concurrency": args.concurrency,
        "rounds": args.rounds, "phases": args.phases, "registry": registry, "url": server.url,
        "server_pid": server.pid, "cpus": os.cpu_count(), "python": platform.python_version(),
        "clock_ticks_per_s": os.sysconf("SC_CLK_TCK"), "server_rss_kib_start": idle_rss,
        "server_rss_mb_start": idle_rss * 1024 / 1e6 if idle_rss is not None else None,
        "server_idle_settle_s": settled,
        "load_average_start": os.getloadavg(),  # other load on the 2 cores shows in wall time, not in CPU per request
    }
    ctx = Context(server, args.nodes, args.concurrency, args.rounds, args.keepalive,
                  time.monotonic() + args.timeout, args.request_timeout,
                  args.query_resources, args.query_requests, args.query_repeats, args.ws, args.storm)
    results: dict[str, dict] = {}
    exit_status = None
    try:
        for name in args.phases:
            if name in NEEDS_REGISTERED and "register" not in results:
                print("registering the population first (not reported) ...", file=sys.stderr)
                phase_register(ctx)
            print(f"phase {name} ...", file=sys.stderr)
            before = machine_busy_ms(), server.cpu_ms(), time.process_time(), time.monotonic()
            results[name] = PHASES[name](ctx)
            after = machine_busy_ms(), server.cpu_ms(), time.process_time(), time.monotonic()
            results[name]["server_rss_kib_after"] = server.rss_kib()
            results[name]["load_average_after"] = os.getloadavg()
            if None not in (*before, *after):
                # What the rest of the machine used meanwhile, in cores: the registry and this script (with the
                # websocket phase's heartbeat process) left out.
                others = (after[0] - before[0]) - (after[1] - before[1]) - (after[2] - before[2]) * 1000 \
                    - results[name].get("heartbeat_process_cpu_ms", 0.0)
                results[name]["other_cpu_cores"] = max(0.0, others) / ((after[3] - before[3]) * 1000)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        meta["load_average_end"] = os.getloadavg()
        meta["server_peak_rss_kib"] = server.peak_rss_kib()
        if server.process is not None:
            exit_status = stop_registry(server)
            meta["server_exit_status"] = exit_status
        # Over the whole run, the shutdown included (a registry may log its longest turn only then).
        meta["reactor_longest_turn_ms"] = longest_reactor_turn_ms(server.log_text() or "")
    text = report(meta, results)
    if exit_status is not None:
        # Popen shows "ended by SIGTERM" as -15; a shell shows the same as 143.
        shown = f"{exit_status} (SIGTERM)" if exit_status == -signal.SIGTERM else str(exit_status)
        verdict = "clean" if exit_status in CLEAN_EXIT else "NOT a clean stop"
        text += f"\nregistry stopped, exit status {shown}: {verdict}"
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "phases": results}, indent=2) + "\n")
    unclean = exit_status is not None and exit_status not in CLEAN_EXIT
    bad = failed(results) or len(results) < len(args.phases) or unclean
    if bad and server.log_path is not None and not args.registry_log:
        print(f"registry output kept in {server.log_path}", file=sys.stderr)
    elif server.log_path is not None and not args.registry_log:
        shutil.rmtree(server.log_path.parent, ignore_errors=True)
    return 1 if bad else 0
