"""The cluster benchmark's command line (benchmarks/bench_cluster.py): the scenarios, the printed report, the JSON
and the exit status (1 when a check of the failover scenario fails)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from .phase_cluster_cost import CostOptions, run_cost
from .phase_failover import FailoverOptions, run_failover

SCENARIOS = ("failover", "cost")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scenarios", default="failover,cost", help=f"comma-separated, from: {', '.join(SCENARIOS)}")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write every figure to FILE as JSON")
    f = FailoverOptions()
    p.add_argument("--nodes", type=int, default=f.nodes, help="failover: Nodes (10 resources each)")
    p.add_argument("--subscribers", type=int, default=f.subscribers, help="failover: WebSocket subscribers")
    p.add_argument("--change-rate", type=float, default=f.change_rate, help="failover: changes per second")
    p.add_argument("--before-kill", type=float, default=f.before_kill, help="failover: seconds before kill -9")
    p.add_argument("--after-member-kill", type=float, default=f.after_member_kill,
                   help="failover: seconds between killing the member and killing the etcd leader")
    p.add_argument("--after-etcd-kill", type=float, default=f.after_etcd_kill,
                   help="failover: seconds of changes after killing the etcd leader")
    c = CostOptions()
    p.add_argument("--cost-nodes", type=int, default=c.nodes, help="cost: Nodes registered per configuration")
    p.add_argument("--cost-concurrency", type=int, default=c.concurrency, help="cost: keep-alive connections")
    p.add_argument("--cost-rounds", type=int, default=c.rounds, help="cost: heartbeats per Node")
    p.add_argument("--cost-latency-posts", type=int, default=c.latency_posts,
                   help="cost: Senders registered one at a time for the grain latency")
    args = p.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := set(args.scenarios) - set(SCENARIOS):
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return args


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_failover(r: dict) -> list[str]:
    """Prints the scenario's figures; returns the checks that failed."""
    f, res, sub, kill = r["failover"], r["resources"], r["subscribers"], r["etcd_kill"]
    print(f"\nfailover: {r['options']['nodes']} nodes over 3 members, {r['options']['subscribers']} subscribers, "
          f"{r['changes']['rate_per_s']:.1f} changes/s accepted ({r['changes']['accepted']} in all)")
    print(f"  registration: {r['registration']['seconds']:.1f} s, failures {r['registration']['failures']}; "
          f"subscribers' initial state {r['subscribers_sync_s']:.1f} s")
    print(f"  member killed: {f['nodes_at_victim']} nodes were heartbeating there; missed their next slot: "
          f"{f['missed_next_slot']}")
    for name in ("failover_time", "heartbeat_answer_before_kill", "kill_to_heartbeat", "gap_between_heartbeats"):
        d = f[name]
        print(f"    {name:28s} p50 {_ms(d['p50_ms'])} ms, p90 {_ms(d['p90_ms'])}, p99 {_ms(d['p99_ms'])}, "
              f"max {_ms(d['max_ms'])} (n={d['count']})")
    print(f"  expired nodes {r['expired_nodes']}; resources registered {res['registered']}, listed {res['listed']}, "
          f"lost {res['lost']}, at an old version {res['wrong_version']}")
    print(f"  subscribers on survivors {sub['on_survivors']}: expected {sub['expected_total']} change events, "
          f"missing {sub['missing_total']}, unexpected {sub['unexpected_total']}, duplicates "
          f"{sub['duplicates_total']}, out of order {sub['order_errors_total']}, closed {len(sub['closed'])}; "
          f"on the killed member {sub['on_victim']} (closed {sub['victims_closed']})")
    print(f"  paging at the surviving members: identical {r['paging']['identical']} ({r['paging']['pages']} pages)")
    print(f"  errors at surviving members after the member kill: {r['errors_at_survivors_after_member_kill']}; "
          f"requests unanswered within {r['options']['answer_timeout']:.0f} s: {r['client_timeouts']}")
    c, b = r["changes"]["answer"], r["changes"]["answer_before_etcd_kill"]
    print(f"  changes answered: p50 {_ms(c['p50_ms'])} ms, p99 {_ms(c['p99_ms'])}, max {_ms(c['max_ms'])}; answered "
          f"before the etcd kill p50 {_ms(b['p50_ms'])}, p99 {_ms(b['p99_ms'])}, max {_ms(b['max_ms'])}")
    hb = kill["heartbeat_answer"]
    print(f"  etcd leader {r['etcd_killed']} killed: {kill['heartbeats']} heartbeats, {kill['changes']} changes, "
          f"{kill['query_reads']} query reads; error answers {kill['error_answers']}; heartbeat answer p99 "
          f"{_ms(hb['p99_ms'])} ms, max {_ms(hb['max_ms'])}")
    for etcd in r["etcd_memory"]:
        print(f"  etcd {etcd['name']}: RSS {etcd['rss_kib'] / 1024:.1f} MiB, peak {etcd['peak_rss_kib'] / 1024:.1f} MiB")
    checks = {"a node missed its next heartbeat slot": f["missed_next_slot"], "nodes expired": r["expired_nodes"],
              "resources lost": res["lost"] + res["wrong_version"], "change events missing": sub["missing_total"],
              "unexpected events": sub["unexpected_total"], "duplicates": sub["duplicates_total"],
              "out of order": sub["order_errors_total"], "subscribers closed": len(sub["closed"]),
              "paging differs": not r["paging"]["identical"],
              "errors at survivors": r["errors_at_survivors_after_member_kill"],
              "errors after the etcd kill": kill["error_answers"]}
    return [name for name, bad in checks.items() if bad]


def print_cost(r: dict) -> None:
    print("\ncost (CPU ms per request: members + etcd = total; all three etcd and every member counted)")
    print(f"  {'config':18s} {'reg/s':>7s} {'reg CPU':>20s} {'hb/s':>7s} {'hb CPU':>20s} {'grain p50/p99':>14s} {'(answer)':>13s} "
          f"{'etcd RSS MiB':>14s}")
    for row in r["rows"]:
        reg, hb, g = row["register"], row["heartbeat"], row["grain"]
        etcd = "/".join(f"{e['rss_kib'] / 1024:.0f}" for e in row.get("etcd", [])) or "-"
        print(f"  {row['config']:18s} {reg['per_s']:7.0f} {reg['members_cpu_ms']:6.2f}+{reg['etcd_cpu_ms']:5.2f}="
              f"{reg['total_cpu_ms']:6.2f} {hb['per_s']:7.0f} {hb['members_cpu_ms']:6.2f}+{hb['etcd_cpu_ms']:5.2f}="
              f"{hb['total_cpu_ms']:6.2f} {_ms(g['from_sent_p50_ms']):>6s}/{_ms(g['from_sent_p99_ms']):>6s} "
              f"{_ms(g['p50_ms']):>6s}/{_ms(g['p99_ms']):>6s} {etcd:>14s}")
        if reg["failures"] or hb["failures"] or g["lost"] or g["failures"]:
            print(f"    failures: registration {reg['failures']}, heartbeats {hb['failures']}, grains lost {g['lost']}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpus": os.cpu_count(),
                 "python": platform.python_version(), "load_average_start": os.getloadavg()}
    failed: list[str] = []
    if "failover" in args.scenarios:
        opts = FailoverOptions(args.nodes, args.subscribers, args.change_rate, before_kill=args.before_kill,
                               after_member_kill=args.after_member_kill, after_etcd_kill=args.after_etcd_kill)
        out["failover"] = run_failover(opts)
        failed += print_failover(out["failover"])
    if "cost" in args.scenarios:
        opts = CostOptions(args.cost_nodes, args.cost_concurrency, args.cost_rounds, args.cost_latency_posts)
        out["cost"] = run_cost(opts)
        print_cost(out["cost"])
    out["load_average_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        return 1
    return 0
