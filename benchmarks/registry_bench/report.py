"""The printed report: the table of every phase's rows, the lines the query and websocket phases add below it,
and whether the run failed."""

from __future__ import annotations

import collections

from .harness import HEARTBEAT_INTERVAL
from .heartbeats import HEARTBEAT_LATE_MS, HEARTBEAT_WAIT_LIMIT_MS
from .http import percentile
from .phase_register import RSS_TARGET_AT_RESOURCES
from .phase_storm import REACTOR_TURN_TARGET_MS
from .phase_websocket import WS_P99_TARGET_MS
from .query_api import QUERY
from .ws_load import SCENARIO_NODE_LIFETIME

INCOMPLETE_SHOWN = 5  # incomplete subscribers described one by one; the others are counted by why they closed
IDLE_RSS_TARGET_MB = 45.0  # issue 13, goal 2: RSS of an empty registry (nmos-cpp: 25 MB)


def fmt(value: float | None, spec: str) -> str:
    """`value` formatted by `spec`; a trailing "%" in `spec` is a literal suffix."""
    if value is None:
        return "n/a"
    return format(value, spec[:-1]) + "%" if spec.endswith("%") else format(value, spec)


def report(meta: dict, results: dict[str, dict]) -> str:
    lines = [
        f"nmos-ref registry benchmark, {meta['date']}",
        "  " + (f"{meta['nodes']} nodes x 10 resources, {meta['concurrency']} keep-alive connections, "
                f"{meta['rounds']} heartbeat rounds; " if {"register", "heartbeat"} & set(meta["phases"]) else "")
        + f"{meta['cpus']} CPUs, Python {meta['python']}, "
        f"load average {meta['load_average_start'][0]:.2f} at start, {meta.get('load_average_end', [0])[0]:.2f} at end",
        f"  registry: {meta['registry']} " + (f"(pid {meta['server_pid']})" if meta["server_pid"] else "(pid unknown)"),
        "",
        (f"{'phase':<13} {'requests':>8} {'wall s':>7} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'srv CPU ms/req':>14} {'target':>14} {'srv busy':>8} {'cli CPU ms/req':>14} {'non-2xx':>7} {'errors':>6}"),
    ]
    for name, r in rows(results):
        if "skipped" in r:
            lines.append(f"{name:<13} skipped: {r['skipped']}")
            continue
        cpu = r["server_cpu_ms_per_request"]
        lines.append(
            f"{name:<13} {r['requests']:>8} {r['wall_s']:>7.2f} {fmt(r['requests_per_s'], '.0f'):>7} "
            f"{fmt(r['latency_p50_ms'], '.2f'):>7} {fmt(r['latency_p99_ms'], '.2f'):>7} "
            f"{fmt(cpu, '.3f'):>14} {target_text(r):>14} "
            f"{fmt(r['server_busy'] and r['server_busy'] * 100, '.0f%'):>8} "
            f"{fmt(r['client_cpu_ms_per_request'], '.3f'):>14} "
            f"{r['non_2xx']:>7} {r['transport_errors']:>6}" + ("  TIMED OUT" if r["timed_out"] else ""))
    if "register" in results and "skipped" not in results["register"]:
        r = results["register"]
        lines.append("")
        lines.append(f"register: {r['requests']} of {r['resources']} resource POSTs sent, {r['nodes_accepted']} of "
                     f"{r['nodes']} nodes accepted, plus {r['keepalive_heartbeats']} keep-alive heartbeats "
                     "in the phase")
        hb = results.get("heartbeat", {}).get("server_cpu_ms_per_request")
        if r["server_cpu_ms"] is not None and hb is not None and r["requests"]:
            net = (r["server_cpu_ms"] - r["keepalive_heartbeats"] * hb) / r["requests"]
            lines.append(f"  server CPU per registration without the keep-alive heartbeats: {net:.3f} ms")
    lines += memory_report(meta, results)
    if (q := results.get("query")) and "skipped" not in q:
        lines += query_report(q)
    if (w := results.get("websocket")) is not None:
        lines += websocket_report(w, meta.get("cpus"))
    if (st := results.get("storm")) is not None:
        lines += storm_report(st)
    if "reactor_longest_turn_ms" in meta:
        turn = meta["reactor_longest_turn_ms"]
        lines.append("registry's longest reactor turn over the run, as its log reports it: "
                     + ("n/a (no such line in its log)" if turn is None else f"{turn:.1f} ms"))
    loads = [f"{name} {r['other_cpu_cores']:.2f} cores, load average {r['load_average_after'][0]:.2f} after"
             for name, r in results.items() if r.get("other_cpu_cores") is not None]
    if loads:
        lines.append("other processes' CPU during each phase: " + "; ".join(loads))
    for name, r in [*results.items(), *results.get("query", {}).get("rows", {}).items()]:
        for sample in r.get("error_samples", []):
            lines.append(f"  {name}: {sample}")
        if r.get("statuses") and set(r["statuses"]) - {"200", "201", "204"}:
            lines.append(f"  {name} statuses: {r['statuses']}")
    return "\n".join(lines)


def mib_mb(kib: float | None) -> str:
    """A kB figure of /proc as MiB and MB (10^6 bytes; the issue's targets are in MB)."""
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB = {kib * 1024 / 1e6:.1f} MB"


def memory_report(meta: dict, results: dict[str, dict]) -> list[str]:
    """The registry's RSS: idle at start (goal 2), its growth per registered resource (goal 1), its peak."""
    start = meta.get("server_rss_kib_start")
    verdict = "" if start is None else (" ok" if start * 1024 <= IDLE_RSS_TARGET_MB * 1e6 else " MISS")
    lines = [(f"server RSS at start, empty and idle ({fmt(meta.get('server_idle_settle_s'), '.1f')} s after its "
              f"first answer): {mib_mb(start)}; target <= {IDLE_RSS_TARGET_MB:g} MB:{verdict or ' n/a'}")]
    if (r := results.get("register")) is not None and "skipped" not in r:
        per = r.get("server_rss_bytes_per_resource")
        held, target = r.get("resources_held", 0), r.get("target_rss_bytes_per_resource")
        verdict = "n/a" if per is None or target is None else ("ok" if per <= target else "MISS")
        if held < RSS_TARGET_AT_RESOURCES:
            verdict += f" (the target is for {RSS_TARGET_AT_RESOURCES:,} resources: --nodes 10000)"
        lines.append(f"server RSS over the register phase: {mib_mb(r.get('server_rss_kib_before'))} before, "
                     f"{mib_mb(r.get('server_rss_kib_registered'))} after; {fmt(per, ',.0f')} bytes of RSS per "
                     f"registered resource ({r.get('resources_stored', 0):,} stored, {held:,} held); target <= "
                     f"{fmt(target, ',d')} bytes: {verdict}")
    peak = meta.get("server_peak_rss_kib")
    if peak is not None:
        lines.append(f"server peak RSS over the run (VmHWM): {mib_mb(peak)}")
    return lines


def setup_text(setup: dict, lead: str = "; ") -> str:
    """The unreported registration a phase ran first, if it ran one: its size, its failures, and the Nodes that
    expired during it (the registry did not keep up with the keep-alive heartbeats)."""
    if not setup.get("nodes_registered"):
        return ""
    expired = setup.get("expired_during_setup")
    return (f"{lead}{setup['nodes_registered']} of them registered for the phase first (not reported: "
            f"{setup['posts']} POSTs in {setup['wall_s']:.1f} s, {setup['failures']} failed"
            + (f"; {expired} Nodes EXPIRED during it, left out of the phase" if expired else "") + ")")


def target_text(r: dict) -> str:
    """The row's target and whether it is met: the server's CPU per request, or a latency (p99 or max) in ms."""
    if (limit := r.get("target_latency_ms")) is not None:
        metric = r.get("target_metric", "p99")
        value = r.get(f"latency_{metric}_ms")
        verdict = "" if value is None else (" ok" if value <= limit else " MISS")
        return f"{metric}<={limit:g}{verdict}"
    cpu, target = r["server_cpu_ms_per_request"], r["target_server_cpu_ms_per_request"]
    if target is None:
        return ""
    return f"<={target:g}" + ("" if cpu is None else (" ok" if cpu <= target else " MISS"))


def rows(results: dict[str, dict]) -> list[tuple[str, dict]]:
    """The table's rows: one per phase, but one per measurement for the query phase."""
    return [row for name, r in results.items()
            for row in ([(name, r)] if "rows" not in r or "skipped" in r else r["rows"].items())]


def query_report(q: dict) -> list[str]:
    """What the query phase's rows measured, and the figures the table has no room for."""
    rows_, setup, cold = q["rows"], q["setup"], q.get("v1.0_cold", {})
    lines = ["", f"query: {q['resources_held']} resources held by {q['nodes_held']} nodes"
             + setup_text(setup),
             (f"  one connection, one request at a time, nothing else sent meanwhile; between blocks of requests "
             f"{q['keepalive_sweeps']} keep-alive sweeps, {q['keepalive_heartbeats']} heartbeats "
             f"({q['keepalive_non_2xx'] + q['keepalive_transport_errors']} failed)")]

    def walk_text(name: str, limit: int) -> str:
        walks = q.get("walks", {}).get(name, [])
        if not walks:
            return ""
        first, rest = walks[0], sorted(w["wall_ms"] for w in walks[1:])
        rest_cpu = [w["server_cpu_ms"] for w in walks[1:] if w["server_cpu_ms"] is not None]
        text = (f"{len(walks)} walks of {first['pages']} pages, {first['items']} senders each; walk 1 (first "
                f"encoding at v1.3) {first['wall_ms']:.0f} ms, {fmt(first['server_cpu_ms'], '.0f')} ms server CPU")
        if rest:
            text += (f"; the others p50 {percentile(rest, 0.5):.0f} ms, max {rest[-1]:.0f} ms, "
                     f"{fmt(sum(rest_cpu) / len(rest_cpu) if rest_cpu else None, '.0f')} ms server CPU each")
        return text

    largest = q.get("largest")
    meaning = {
        "q-label": f"GET {QUERY}/v1.3/senders?label=<a Sender's unique label>, each a different Sender, "
                   "each must return exactly it; target: a tenth of nmos-cpp's 36 ms",
        "q-id": f"GET {QUERY}/v1.3/senders/{{id}}, each a different Sender",
        "q-page100": f"GET {QUERY}/v1.3/senders?paging.limit=100, then rel=\"prev\" (older) to the end: "
                     + walk_text("q-page100", 100),
        "q-page1000": "the same with paging.limit=1000: " + walk_text("q-page1000", 1000),
        "q-v10-cold": f"the first GET {QUERY}/v1.0/{largest}, the largest collection "
                      f"({fmt(cold.get(largest, {}).get('resources'), 'd')} resources, "
                      f"{cold.get(largest, {}).get('bytes', 0) / 1e6:.1f} MB; v1.0 lists are never paged)",
        "q-v10-warm": "the same GET again (translations and encodings cached)",
        "q-all-cold": "the first GET of every v1.0 collection: " + ", ".join(
            f"{c} {fmt(v['resources'], 'd')} ({v['bytes'] / 1e6:.1f} MB) {fmt(v['latency_ms'], '.0f')} ms, "
            f"{fmt(v['server_cpu_ms'], '.0f')} ms CPU" for c, v in cold.items()),
        "q-all-warm": "every v1.0 collection again, one after the other",
    }
    for name in rows_:
        lines.append(f"  {name:<10} {meaning.get(name, '')}")
    if cold:
        total_bytes = sum(v["bytes"] for v in cold.values())
        all_resources = sum(v["resources"] or 0 for v in cold.values())
        sweep = rows_.get("q-all-cold", {})
        lines.append(f"  all {len(cold)} v1.0 collections, {all_resources} resources, {total_bytes / 1e6:.1f} MB: "
                     f"cold {fmt(sweep.get('sweep_wall_ms'), '.0f')} ms and "
                     f"{fmt(sweep.get('server_cpu_ms'), '.0f')} ms server CPU for the six GETs")
        if warm := sorted(s["wall_ms"] for s in q.get("all_warm_sweeps", [])):
            cpu = [s["server_cpu_ms"] for s in q["all_warm_sweeps"] if s["server_cpu_ms"] is not None]
            lines[-1] += (f"; warm p50 {percentile(warm, 0.5):.0f} ms, max {warm[-1]:.0f} ms over {len(warm)} "
                          f"sweeps, {fmt(sum(cpu) / len(cpu) if cpu else None, '.0f')} ms server CPU per sweep")
    measured = [(r["latency_max_ms"], name) for name, r in rows_.items() if r["latency_max_ms"] is not None]
    if measured:
        lines.append("  max ms: " + ", ".join(f"{name} {value:.2f}" for value, name in measured))
        slowest, where = max(measured)
        verdict = "yes" if slowest < q["latency_limit_ms"] else "NO"
        lines.append(f"  slowest query request {slowest:.0f} ms ({where}); every request within "
                     f"{q['latency_limit_ms']:.0f} ms: {verdict}")
    wrong = sum(r.get("wrong_results", 0) for r in rows_.values())
    lines.append(f"  wrong answers (a 200 with other resources than the query must return): {wrong}"
                 + (f"; {q['short_windows']} blocks began with less time left than estimated"
                    if q.get("short_windows") else ""))
    return lines


def websocket_report(w: dict, cores: int | None = None) -> list[str]:
    """What the websocket phase's rows measured, the load scenario's figures and the issue's targets, judged."""
    rows_, opts = w.get("rows", {}), w.get("options", {})
    setup = w.get("setup", {})
    lines = ["", f"websocket: {fmt(w.get('nodes_held'), 'd')} Nodes held ({fmt(w.get('resources_held'), 'd')} "
                 f"resources)" + setup_text(setup, ", ")
             + f"; each heartbeated every {HEARTBEAT_INTERVAL:g} s by a separate process over "
               f"{fmt(w.get('heartbeat_connections'), 'd')} keep-alive connections; subscriptions at v1.3, "
               + ("each with a filter of its own that every resource matches (--ws-distinct), " if opts.get("distinct")
                  else "no filter, ")
               + f"max_update_rate_ms {opts.get('rate_ms')}; times are the kernel's receive timestamps"]
    if w.get("error"):
        lines.append(f"  phase stopped by an error: {w['error']}")
    for name, r in rows_.items():
        if name.startswith("ws-hb") or name == "ws-load":
            continue
        lines.append(
            f"  {name:<10} {r['subscribers']} subscriber(s) of /senders ({r['subscriptions_created']} subscription(s) "
            f"created, {r['subscriptions_reused']} POSTs answered with an existing one); {r['requests']} Senders "
            f"registered one at a time; latency from the kernel's receipt of each 201 to its receipt of the grain, "
            f"over {r['pairs']} (Sender, subscriber) pairs: p50 {fmt(r['latency_p50_ms'], '.2f')}, "
            f"p99 {fmt(r['latency_p99_ms'], '.2f')}, max {fmt(r['latency_max_ms'], '.2f')}, "
            f"min {fmt(r['latency_min_ms'], '.2f')} ms; lost {r['lost_notifications']}; from the POST sent instead: "
            f"p50 {fmt(r['from_sent_p50_ms'], '.2f')}, p99 {fmt(r['from_sent_p99_ms'], '.2f')}, "
            f"max {fmt(r['from_sent_max_ms'], '.2f')} ms (the registration's own 201: p50 "
            f"{fmt(r['registration_http_p50_ms'], '.2f')}, p99 {fmt(r['registration_http_p99_ms'], '.2f')} ms)")
        lines.append(
            f"  {'':<10} server CPU per registration {fmt(r['server_cpu_ms_per_request'], '.3f')} ms, "
            f"{fmt(r.get('server_cpu_ms_per_request_net'), '.3f')} ms without the "
            f"{fmt(r.get('heartbeats_in_window'), 'd')} background heartbeats; client CPU "
            f"{fmt(r['client_cpu_ms_per_request'], '.3f')} ms per registration; longest wait of a received grain "
            f"to be parsed {r['client_read_lag_max_ms']:.1f} ms; initial state ({r['sync_events_per_subscriber']} "
            f"Senders each) in {fmt(r['sync_s'], '.2f')} s")
    if (r := rows_.get("ws-load")) is not None:
        mix = ", ".join(f"{n} on /{c}" for c, n in r["collections"].items())
        sync = r["sync_s"]
        lines += [
            f"  ws-load    {r['subscribers']} subscribers connecting at once ({mix}; {r['subscriptions_created']} "
            f"subscriptions created, {r['subscriptions_reused']} reused); initial state per subscriber: "
            + ", ".join(f"/{c} {n}" for c, n in r["expected_sync_per_collection"].items()) + " resources",
            (f"  {'':<10} TCP connects and handshake requests sent in {r['connects_s'] * 1000:.0f} ms; every "
            f"handshake answered {r['handshakes_s'] * 1000:.0f} ms after the first connect"),
            f"  {'':<10} initial sync, first connect to the last subscriber's full initial state: "
            + (f"{sync:.2f} s" if sync is not None else
               f"NOT COMPLETE ({r['sync_complete']} of {r['subscribers']} subscribers)")
            + f" (first subscriber {fmt(r['sync_min_s'], '.2f')} s, median {fmt(r['sync_p50_s'], '.2f')} s); "
              f"{r['sync_events']} sync events, {r['sync_bytes'] / 1e6:.0f} MB received; CPU until then: server "
              f"{fmt(r['sync_server_cpu_ms'] and r['sync_server_cpu_ms'] / 1000, '.1f')} s, this client "
              f"{fmt(r['sync_client_cpu_ms'] and r['sync_client_cpu_ms'] / 1000, '.1f')} s, in "
              f"{fmt(r['sync_window_s'], '.1f')} s",
            *([f"  {'':<10} the Query API's lists before the scenario differ from what the phase registered: {m}"
               ] if (m := r.get("listing_mismatch")) else []),
            *[f"  {'':<10} INCOMPLETE: subscriber {i['subscriber']} (/{i['collection']}, {i['state']}"
              + (f", {i['closed']}" if i["closed"] else "") + f"): {i['missing']} of {i['expected_sync']} missing "
              f"(e.g. {', '.join(i['missing_sample'])}), {i['grains']} grains, {i['bytes']} bytes, the last "
              f"{fmt(i['last_grain_s'], '.2f')} s after the first connect"
              for i in r.get("incomplete", [])[:INCOMPLETE_SHOWN]],
            *([f"  {'':<10} ... and {len(r['incomplete']) - INCOMPLETE_SHOWN} more incomplete subscribers (JSON: "
               f"`incomplete`); closed: " + "; ".join(f"{n} {why}" for why, n in collections.Counter(
                   i["closed"] or "still open" for i in r["incomplete"]).most_common())]
              if len(r.get("incomplete", [])) > INCOMPLETE_SHOWN else []),
            (f"  {'':<10} changes from {fmt(r['first_change_s'], '.2f')} s after the first connect for "
            f"{fmt(r['changes_s'], '.1f')} s: {r['requests']} requests at {fmt(r['requests_per_s'], '.0f')}/s "
            f"({r['nodes_created']} Nodes registered, {r['modifications']} modifications, {r['nodes_deleted']} "
            f"Nodes deleted) = {r['changes']} changes; the change thread was at most "
            f"{r['changer_behind_max_s'] * 1000:.0f} ms behind its schedule"
            + (f"; {r['scenario_nodes_gone']} of the scenario's own Nodes (never heartbeated: each should live "
               f"{SCENARIO_NODE_LIFETIME} cycles) expired before their DELETE, their removals are among the events "
               "for no change of ours" if r.get("scenario_nodes_gone") else "")),
            (f"  {'':<10} notifications: {r['notifications_expected']} expected (each change, to every subscriber "
            f"of its type), {r['notifications_received']} received, {r['lost_notifications']} lost; latency from "
            f"the change's answer p50 {fmt(r['latency_p50_ms'], '.1f')}, p99 {fmt(r['latency_p99_ms'], '.1f')}, "
            f"max {fmt(r['latency_max_ms'], '.1f')} ms; {r['duplicates']} duplicates, {r['extra_events']} events "
            f"for no change of ours ({r['population_nodes_removed_events']} removals of held Nodes)"),
            (f"  {'':<10} of these, to subscribers that had their initial state when the change was answered: "
            f"{r['synced_notifications']}, p50 {fmt(r['synced_p50_ms'], '.1f')}, p99 {fmt(r['synced_p99_ms'], '.1f')}, "
            f"max {fmt(r['synced_max_ms'], '.1f')} ms; to subscribers still receiving it (they come after it, by "
            f"design): {r['syncing_notifications']}, p50 {fmt(r['syncing_p50_ms'], '.0f')}, "
            f"p99 {fmt(r['syncing_p99_ms'], '.0f')}, max {fmt(r['syncing_max_ms'], '.0f')} ms"),
            (f"  {'':<10} of all, for changes answered once every subscriber had its initial state (the steady "
            f"state): {r.get('steady_notifications')}, p50 {fmt(r.get('steady_p50_ms'), '.1f')}, "
            f"p99 {fmt(r.get('steady_p99_ms'), '.1f')}, max {fmt(r.get('steady_max_ms'), '.1f')} ms"),
            (f"  {'':<10} server: {fmt(r['server_cpu_ms'] and r['server_cpu_ms'] / 1000, '.1f')} s CPU over "
            f"{r['wall_s']:.1f} s ({fmt(r['server_busy'] and r['server_busy'] * 100, '.0f%')} of a core); RSS "
            f"{fmt(r['server_rss_kib_before'] and r['server_rss_kib_before'] / 1024, '.0f')} MiB before, "
            f"{fmt(r['server_rss_kib_peak'] and r['server_rss_kib_peak'] / 1024, '.0f')} MiB at most, "
            f"{fmt(r['server_rss_kib_end'] and r['server_rss_kib_end'] / 1024, '.0f')} MiB after; this client "
            f"{r['client_cpu_ms'] / 1000:.1f} s CPU ({r['client_cpu_ms'] / 1000 / r['wall_s'] * 100:.0f}% of a "
            f"core), longest wait of a received grain to be parsed {r['client_read_lag_max_ms']:.0f} ms"),
        ]
        if (shares := r.get("sync_machine_shares")) is not None:
            lines.append(
                f"  {'':<10} the machine during the initial sync ({shares['wall_s']:.1f} s"
                + ("" if sync is not None else ", incomplete") + f", in cores of {cores}): registry "
                f"{fmt(shares['registry_cores'], '.2f')}, this client (subscribers, changes) "
                f"{fmt(shares['client_cores'], '.2f')}, heartbeat process "
                f"{fmt(shares['heartbeat_process_cores'], '.2f')}"
                f", other processes {fmt(shares['other_cores'], '.2f')}; all {fmt(shares['machine_cores'], '.2f')}")
        lines.append(f"  {'':<10} changes made {fmt(r.get('changes_per_s'), '.1f')}/s; registry peak RSS (VmHWM, "
                     f"whole run so far) {mib_mb(r.get('server_vmhwm_kib_end'))}")
    for name in ("ws-hb-base", "ws-hb-load"):
        if (r := rows_.get(name)) is not None:
            what = "before any subscriber (heartbeats only)" if name == "ws-hb-base" else "during ws-load"
            lines.append(heartbeat_text(name, what, r))
    lines += late_warning(rows_)
    if w.get("heartbeat_server_cpu_ms") is not None:
        lines.append(f"  server CPU per heartbeat (ws-hb-base) {w['heartbeat_server_cpu_ms']:.3f} ms; "
                     f"{heartbeat_process_text(w)}; connections refused "
                     f"by a full listen queue during the phase (TcpExt ListenOverflows, whole machine): "
                     f"{fmt(w.get('listen_overflows'), 'd')}")
    # The issue's targets.
    verdicts = []
    if (r := next((r for n, r in rows_.items() if r.get("target_metric") == "p99" and r.get("target_latency_ms")),
                  None)) is not None:
        value = r["latency_p99_ms"]
        verdicts.append(f"p99 at {r['subscribers']} subscribers {fmt(value, '.2f')} ms <= {WS_P99_TARGET_MS:g}: "
                        + ("yes" if value is not None and value <= WS_P99_TARGET_MS else "NO"))
    if (load := rows_.get("ws-load")) is not None:
        listed, held = w.get("nodes_listed_after"), w.get("nodes_expected_after")
        expired = w.get("expired_nodes", 0)
        verdicts.append(f"Nodes expired {expired} (404 heartbeats), Query API lists {fmt(listed, 'd')} of "
                        f"{fmt(held, 'd')} Nodes after: "
                        + ("yes" if not expired and listed == held and not load["population_nodes_removed_events"]
                           else "NO"))
        verdicts.append(f"notifications lost {load['lost_notifications']} of {load['notifications_expected']}"
                        + (f" ({len(load['closed_early'])} subscriber(s) closed early)" if load["closed_early"]
                           else "") + ": " + ("yes" if not load["lost_notifications"] else "NO"))
        if (hb := rows_.get("ws-hb-load")) is not None:
            verdicts.append(f"longest heartbeat wait {fmt(hb['latency_max_ms'], '.0f')} ms <= "
                            f"{HEARTBEAT_WAIT_LIMIT_MS:.0f}: " + ("yes" if hb["over_limit"] == 0 else "NO"))
        p99, limit = load.get("steady_p99_ms"), load.get("synced_target_p99_ms")
        verdicts.append(f"grain p99 once the subscribers are in sync {fmt(p99, '.1f')} ms <= {fmt(limit, 'g')}: "
                        + ("n/a" if p99 is None or limit is None else "yes" if p99 <= limit else "NO")
                        + f" (to each subscriber once it alone was in sync: {fmt(load.get('synced_p99_ms'), '.1f')} ms)")
        sync = load.get("sync_s")
        verdicts.append(f"all {load['subscribers']} initial syncs " + (f"in {sync:.1f} s" if sync is not None
                                                                       else "NOT complete") + ": "
                        + ("yes" if sync is not None else "NO"))
        peak, limit = load.get("server_vmhwm_kib_end"), load.get("target_peak_rss_mb")
        verdicts.append(f"peak RSS {fmt(peak and peak * 1024 / 1e6, '.0f')} MB <= {fmt(limit, 'g')}: "
                        + ("n/a" if peak is None or limit is None else "yes" if peak * 1024 / 1e6 <= limit else "NO"))
    if verdicts:
        lines.append("  targets (issue 13, goal 4 at 10,000 Nodes x 100 subscribers): " + "; ".join(verdicts))
    return lines


def failed(results: dict[str, dict]) -> bool:
    everything = [*results.values(), *(r for _, r in rows(results))]
    return any(r.get("unexpected_status") or r.get("transport_errors") or r.get("timed_out") or r.get("non_2xx")
               or r.get("keepalive_non_2xx") or r.get("keepalive_transport_errors") or r.get("wrong_results")
               or (r.get("setup") or {}).get("failures") or r.get("error") or r.get("expired_nodes")
               for r in everything)


def storm_report(st: dict) -> list[str]:
    """The storm phase: the big Node's registration, the other Nodes' heartbeats meanwhile, the issue's targets."""
    rows_, setup = st.get("rows", {}), st.get("setup", {})
    lines = ["", f"storm: {fmt(st.get('nodes_held'), 'd')} Nodes held, each heartbeated every {HEARTBEAT_INTERVAL:g} s "
                 f"by a separate process over {fmt(st.get('heartbeat_connections'), 'd')} keep-alive connections"
             + setup_text(setup)]
    if st.get("error"):
        lines.append(f"  phase stopped by an error: {st['error']}")
    if (r := rows_.get("storm")) is not None:
        lines.append(
            f"  storm      one Node registers {r['resources']} resources (stages of "
            f"{', '.join(map(str, r['stages']))}: "
            f"the Node, its Devices, the rest) over {r['connections']} connections: {r['resources_stored']} stored in "
            f"{r['registration_s']:.2f} s ({fmt(r['requests_per_s'], '.0f')}/s), POST p50 "
            f"{fmt(r['latency_p50_ms'], '.1f')}, p99 {fmt(r['latency_p99_ms'], '.1f')}, max "
            f"{fmt(r['latency_max_ms'], '.1f')} ms; server CPU {fmt(r['server_cpu_ms_per_request'], '.3f')} ms per "
            f"registration; longest reactor turn the registry logged meanwhile: "
            + ("n/a" if r["reactor_longest_turn_ms"] is None else f"{r['reactor_longest_turn_ms']:.1f} ms"))
    for name in ("storm-hb-base", "storm-hb"):
        if (r := rows_.get(name)) is not None:
            what = "in the interval before the storm" if name == "storm-hb-base" else "while the big Node registered"
            lines.append(heartbeat_text(name, what, r))
    lines += late_warning(rows_)
    if st.get("heartbeat_process_cpu_ms") is not None:
        lines.append(f"  {heartbeat_process_text(st)}")
    if st.get("big_node_delete_ms") is not None:
        turn = st.get("big_node_delete_turn_ms")
        lines.append(f"  the big Node's DELETE (every resource in one request) answered {st['big_node_delete_status']} "
                     f"in {st['big_node_delete_ms']:.0f} ms while the others heartbeat; longest reactor turn the "
                     f"registry logged next: {fmt(turn, '.1f')} ms"
                     + (f" <= {REACTOR_TURN_TARGET_MS} ms: {'yes' if turn <= REACTOR_TURN_TARGET_MS else 'NO'}"
                        if turn is not None else ""))
    verdicts = []
    if (hb := rows_.get("storm-hb")) is not None:
        verdicts.append(f"worst heartbeat wait {fmt(hb['latency_max_ms'], '.0f')} ms <= {HEARTBEAT_WAIT_LIMIT_MS:.0f}: "
                        + ("yes" if hb["requests"] and hb["over_limit"] == 0 else "NO"))
    listed, held = st.get("nodes_listed_after"), st.get("nodes_expected_after")
    verdicts.append(f"Nodes expired {fmt(st.get('expired_nodes'), 'd')} (404 heartbeats), Query API lists "
                    f"{fmt(listed, 'd')} of {fmt(held, 'd')} Nodes after: "
                    + ("yes" if not st.get("expired_nodes") and listed == held else "NO"))
    if (r := rows_.get("storm")) is not None:
        turn = r["reactor_longest_turn_ms"]
        verdicts.append(f"longest reactor turn {fmt(turn, '.1f')} ms <= {r['target_reactor_turn_ms']:g} ms: "
                        + ("n/a (no such line in the registry's log)" if turn is None
                           else "yes" if turn <= r["target_reactor_turn_ms"] else "NO"))
    lines.append("  targets (issue 13, goal 5): " + "; ".join(verdicts))
    return lines


def heartbeat_process_text(d: dict) -> str:
    """The heartbeat process of a phase: its CPU and how its connections were opened."""
    return (f"heartbeat process {d.get('heartbeat_process_cpu_ms', 0) / 1000:.1f} s CPU in all, its connections "
            f"opened in {fmt(d.get('heartbeat_connect_s'), '.1f')} s before the first heartbeat "
            f"({fmt(d.get('heartbeat_unconnected_at_start'), 'd')} failed; "
            f"{fmt(d.get('heartbeat_keepalive_sweeps'), 'd')} keep-alive sweeps meanwhile)")


def late_warning(rows_: dict[str, dict]) -> list[str]:
    """A warning when the heartbeat process itself sent heartbeats late: then its rows measure this machine."""
    late = [(name, r["send_late_max_ms"]) for name, r in rows_.items()
            if "-hb" in name and (r.get("send_late_max_ms") or 0) > HEARTBEAT_LATE_MS]
    if not late:
        return []
    return ["  WARNING: the heartbeat process itself sent heartbeats late (" + ", ".join(
        f"{name} up to {value:.0f} ms" for name, value in late) + "): those waits are partly this client's, and "
        "Nodes may have expired because of it; the heartbeat figures of this run do not judge the registry"]


def heartbeat_text(name: str, what: str, r: dict) -> str:
    """A heartbeat row (ws-hb-*, storm-hb*) in words: the waits, who was late, whether the process kept up."""
    return (f"  {name:<13} heartbeats due {what}: {r['requests']} ({fmt(r.get('due_per_s'), '.0f')}/s due, "
            f"{fmt(r.get('answered_per_s'), '.0f')}/s answered 200), wait from due to answer p50 "
            f"{fmt(r['latency_p50_ms'], '.2f')}, p99 {fmt(r['latency_p99_ms'], '.2f')}, max "
            f"{fmt(r['latency_max_ms'], '.2f')} ms (the longest due {fmt(r['worst_due_s'], '.2f')} s into the "
            f"window; longest wait to be sent {r['send_late_max_ms']:.0f} ms, longest round trip "
            f"{r['round_trip_max_ms']:.0f} ms); {r['over_limit']} over {HEARTBEAT_WAIT_LIMIT_MS:.0f} ms; "
            f"longest a Node went without an answered heartbeat {r['longest_silence_s']:.2f} s; "
            f"{r['expired_nodes']} answered 404")
