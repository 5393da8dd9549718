"""The failover scenario (issue 14): a cluster of three etcd and three nmos-ref members; Nodes spread over the members
(registering, heartbeating, changing, failing over: failover_nodes); WebSocket subscribers spread over them; then
`kill -9` of one member, and later of the etcd leader. What it checks, from what every client saw:

- every Node that used the killed member heartbeats at another one in the slot of its next heartbeat (the failover
  time: from that slot to the 200, the distribution), none expires, no resource is lost or left at an old version;
- every subscriber on a surviving member receives every change (a POST answered 200 with a later version) of its
  collection exactly once, each resource's versions in order, and its socket stays open;
- every surviving member gives the same paging answers (the same pages of the same resources, the same
  X-Paging-* headers) for the same paging requests;
- once the etcd leader is killed, no request anywhere gets an error answer (heartbeats, changes, and Query API reads
  polled at every surviving member).
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from .cluster import Cluster
from .failover_nodes import failover_child
from .http import Connection, ProtocolError, build_request, percentile
from .query_api import LINK, QUERY, V10_COLLECTIONS
from .server import Server
from .ws_client import KIND, Hub, Subscriber


@dataclass
class FailoverOptions:
    nodes: int = 3000
    subscribers: int = 50
    change_rate: float = 50.0
    interval: float = 5.0  # the Nodes' heartbeat interval (IS-04's default)
    before_kill: float = 20.0  # seconds of changes before the member is killed
    after_member_kill: float = 30.0  # seconds of changes after it, before the etcd leader is killed
    after_etcd_kill: float = 30.0  # seconds of changes after that
    answer_timeout: float = 10.0  # a Node's request unanswered this long fails over (none was, in the runs)
    page_limit: int = 500
    registration_timeout: float = 900.0


def _version(text: str) -> tuple[int, int]:
    seconds, _, nanos = text.partition(":")
    return int(seconds), int(nanos)


def subscribe_at(member: Server, collection: str) -> str:
    """A subscription of its own (a filter every resource matches) to v1.3 `collection` at `member`; its ws path."""
    body = json.dumps({"max_update_rate_ms": 0, "resource_path": f"/{collection}", "persist": False, "secure": False,
                       "params": {"query.rql": f"ne(id,{uuid.uuid4()})"}}).encode()
    http = Connection(member.host, member.port, 10.0)
    try:
        status, _, reply = http.exchange(build_request("POST", f"{QUERY}/v1.3/subscriptions",
                                                       f"{member.host}:{member.port}", body))
    finally:
        http.close()
    if status != 201:
        raise ProtocolError(f"POST subscriptions at {member.url} answered {status}: {reply[:200]!r}")
    href = urlsplit(json.loads(reply)["ws_href"])
    if (href.hostname, href.port) != (member.host, member.port):
        raise ProtocolError(f"ws_href {href.geturl()} is not the member that created it ({member.url})")
    return href.path


class QueryPoller(threading.Thread):
    """Reads the Query API of every member ten times a second from the moment it starts; every answer's status
    (-1: a transport error) with its monotonic time, per member."""

    def __init__(self, members: list[Server]) -> None:
        super().__init__(daemon=True)
        self.members = list(members)
        self.seen: list[tuple[float, int, int]] = []  # (when, member port, status)
        self.halt = threading.Event()

    def run(self) -> None:
        links = {m.port: Connection(m.host, m.port, 5.0) for m in self.members}
        requests = {m.port: build_request("GET", f"{QUERY}/v1.3/nodes?paging.limit=10", f"{m.host}:{m.port}")
                    for m in self.members}
        while not self.halt.wait(0.1):
            for member in list(self.members):
                try:
                    status = links[member.port].exchange(requests[member.port])[0]
                except (OSError, ProtocolError, ValueError):
                    status = -1
                self.seen.append((time.monotonic(), member.port, status))
        for link in links.values():
            link.close()


def paging_walk(member: Server, collection: str, limit: int, paths: list[str] | None = None) \
        -> tuple[list[str], list[tuple[int, str, str, str, bytes]], dict[str, str]]:
    """The pages of a v1.3 collection at `member`, newest first, following rel="prev" (or the `paths` given, as another
    member walked them): the paths asked, each answer as (status, X-Paging-Since, X-Paging-Until, X-Paging-Limit,
    body), and {id: version} of every resource listed."""
    http = Connection(member.host, member.port, 30.0)
    asked, answers, versions = [], [], {}
    path: str | None = paths[0] if paths else f"{QUERY}/v1.3/{collection}?paging.limit={limit}"
    try:
        for step in range(10_000):
            asked.append(path)
            status, headers, body = http.exchange(build_request("GET", path, f"{member.host}:{member.port}"))
            answers.append((status, headers.get("x-paging-since", ""), headers.get("x-paging-until", ""),
                            headers.get("x-paging-limit", ""), body))
            if status != 200:
                break
            for item in json.loads(body):
                versions[item["id"]] = item["version"]
            if paths is not None:
                path = paths[step + 1] if step + 1 < len(paths) else None
            elif headers.get("x-paging-since") == "0:0":
                path = None
            else:
                path = next((urlsplit(url).path + "?" + urlsplit(url).query
                             for url, rel in LINK.findall(headers.get("link", "")) if rel == "prev"), None)
            if path is None:
                break
    finally:
        http.close()
    return asked, answers, versions


def _distribution(values: list[float]) -> dict:
    values = sorted(values)
    return {"count": len(values), "p50_ms": (p * 1000 if (p := percentile(values, 0.50)) is not None else None),
            "p90_ms": (p * 1000 if (p := percentile(values, 0.90)) is not None else None),
            "p99_ms": (p * 1000 if (p := percentile(values, 0.99)) is not None else None),
            "max_ms": values[-1] * 1000 if values else None, "min_ms": values[0] * 1000 if values else None}


def run_failover(opts: FailoverOptions) -> dict:
    """Runs the scenario on a cluster it starts and stops; its figures and checks, JSON-ready."""
    result: dict = {"scenario": "failover", "options": vars(opts).copy()}
    cluster = Cluster.start_etcd(3)
    child = pipe = hub = poller = None
    try:
        for _ in range(3):
            cluster.add_member()
        members = list(cluster.members)
        result["members"] = [m.url for m in members]
        spawn = multiprocessing.get_context("spawn")
        pipe, child_end = spawn.Pipe()
        deadline = time.monotonic() + opts.registration_timeout + opts.before_kill + opts.after_member_kill \
            + opts.after_etcd_kill + 300
        child = spawn.Process(target=failover_child, daemon=True,
                              args=(child_end, [(m.host, m.port) for m in members], opts.nodes, opts.interval,
                                    opts.answer_timeout, deadline))
        child.start()
        child_end.close()
        print(f"failover: registering {opts.nodes} nodes over {len(members)} members ...", file=sys.stderr)
        population = registration = None
        until = time.monotonic() + opts.registration_timeout
        while population is None:
            if not pipe.poll(max(0.0, until - time.monotonic())):
                raise RuntimeError("the Nodes were not registered in time")
            message = pipe.recv()
            if message[0] == "progress":
                print(f"failover: {message[1]} nodes registered ({message[2]} refusals, {message[3]} failovers)",
                      file=sys.stderr)
            else:
                _, population, registration = message
        result["registration"] = registration
        ids_of = collections.defaultdict(set)
        for node in population:
            for kind, rid in node:
                ids_of[kind].add(rid)

        # Subscribers spread over the members, collections in turn, each with a subscription of its own.
        print(f"failover: {opts.subscribers} subscribers ...", file=sys.stderr)
        hub, subscribers = Hub(), []
        started = time.monotonic()
        for k in range(opts.subscribers):
            member, collection = members[k % len(members)], V10_COLLECTIONS[k % len(V10_COLLECTIONS)]
            subscriber = Subscriber(k, collection, subscribe_at(member, collection), member,
                                    ids_of[KIND[collection]], 30.0)
            subscriber.member = member
            subscribers.append(subscriber)
            hub.add(subscriber)
        if not hub.wait(lambda: all(s.sync_done is not None or s.closed for s in subscribers), started + 300):
            raise RuntimeError("the subscribers did not get their initial state in time")
        result["subscribers_sync_s"] = time.monotonic() - started
        result["subscribers_closed_before"] = [s.closed for s in subscribers if s.closed]

        poller = QueryPoller(members)
        poller.start()
        print(f"failover: changes at {opts.change_rate}/s ...", file=sys.stderr)
        pipe.send(("changes", opts.change_rate))
        changes_from = time.monotonic()
        hub.wait(lambda: False, changes_from + opts.before_kill)
        victim = members[-1]
        print(f"failover: kill -9 member {victim.url} ...", file=sys.stderr)
        killed_at = time.monotonic()
        cluster.kill_member(victim)
        poller.members.remove(victim)
        hub.wait(lambda: False, killed_at + opts.after_member_kill)
        leader = cluster.leader()
        print(f"failover: kill -9 etcd leader {leader.name if leader else None} ...", file=sys.stderr)
        etcd_killed_at = time.monotonic()
        if leader is not None:
            leader.kill()
        hub.wait(lambda: False, etcd_killed_at + opts.after_etcd_kill)
        pipe.send(("changes", 0))
        changes_until = time.monotonic()
        hub.wait(lambda: False, changes_until + 3.0)  # the last answers, and the grains they cause
        poller.halt.set()
        poller.join(10)

        # Paging at every surviving member: the same requests, the same answers; nothing lost.
        print("failover: paging at the surviving members ...", file=sys.stderr)
        first, *others = cluster.members
        paging = {"identical": True, "pages": 0, "differences": []}
        listed: dict[str, str] = {}
        for collection in V10_COLLECTIONS:
            asked, answers, versions = paging_walk(first, collection, opts.page_limit)
            listed.update(versions)
            paging["pages"] += len(asked)
            for other in others:
                _, theirs, _ = paging_walk(other, collection, opts.page_limit, asked)
                if theirs != answers:
                    paging["identical"] = False
                    paging["differences"].append(f"{collection} at {other.url}: "
                                                 f"{sum(a != b for a, b in zip(answers, theirs))} pages differ")
        result["paging"] = paging

        pipe.send(("stop",))
        report = None
        while report is None:
            if not pipe.poll(60):
                raise RuntimeError("the Nodes' process did not report")
            message = pipe.recv()
            if message[0] == "done":
                report = message[1]
        child.join(10)
        result.update(judge(opts, report, population, subscribers, listed, poller.seen, victim,
                            members.index(victim), killed_at,
                            etcd_killed_at, changes_from, changes_until, hub))
        result["etcd_killed"] = leader.name if leader else None
        result["etcd_memory"] = cluster.etcd_memory()
        result["members_rss_kib"] = [m.rss_kib() for m in cluster.members]
    finally:
        if hub is not None:
            hub.close()
        if poller is not None:
            poller.halt.set()
        if child is not None and child.is_alive():
            child.kill()
        cluster.stop()
    return result


def judge(opts: FailoverOptions, report: dict, population: list, subscribers: list[Subscriber],
          listed: dict[str, str], polled: list[tuple[float, int, int]], victim: Server, victim_index: int,
          killed_at: float,
          etcd_killed_at: float, changes_from: float, changes_until: float, hub: Hub) -> dict:
    samples = report["samples"]  # (what, node, member, due, sent, answered, status, detail)
    # 1. Failover: the Nodes that were heartbeating at the victim when it died.
    last_ok: dict[int, tuple[int, float]] = {}
    for what, node, member, due, sent, answered, status, detail in samples:
        if what == "beat" and status == 200 and answered < killed_at:
            last_ok[node] = (member, answered)
    affected = {node for node, (member, _) in last_ok.items() if member == victim_index}
    beats_of: dict[int, list[tuple]] = collections.defaultdict(list)
    for sample in samples:
        if sample[0] == "beat" and sample[1] in affected:
            beats_of[sample[1]].append(sample)
    failover_ms, since_kill, gaps, missed = [], [], [], []
    for node in sorted(affected):
        last = last_ok[node][1]
        after = sorted((s for s in beats_of[node] if s[4] > last), key=lambda s: s[4])  # sent after the last 200
        ok = [s for s in after if s[6] == 200]
        if not ok:
            missed.append(node)
            continue
        first = min(ok, key=lambda s: s[5])  # the first 200 after the kill: at another member
        if first[3] != min(s[3] for s in after):  # the slot after its last 200 was not the one answered
            missed.append(node)
        failover_ms.append(first[5] - first[3])  # from its slot: the failed try at the dead member, then the next
        since_kill.append(first[5] - killed_at)
        gaps.append(first[5] - last)
    # 2. Changes: those answered 2xx are what the subscribers must receive.
    accepted = [(s[7], s[5]) for s in samples if s[0] == "change" and 200 <= s[6] < 300]
    latest: dict[str, str] = {}
    for (kind, rid, version), _ in sorted(accepted, key=lambda item: item[1]):
        if rid not in latest or _version(version) > _version(latest[rid]):
            latest[rid] = version
    expected_by_kind = collections.defaultdict(set)
    for (kind, rid, version), _ in accepted:
        expected_by_kind[kind].add((rid, version))
    survivors = [s for s in subscribers if s.member.port != victim.port]
    hub.wait(lambda: all(expected_by_kind[s.kind] <= set(s.changes) or s.closed for s in survivors),
             time.monotonic() + 15.0)
    subscriber_rows = []
    for s in survivors:
        expected = expected_by_kind[s.kind]
        received = set(s.changes)
        order_errors = 0
        last: dict[str, tuple[int, int]] = {}
        for rid, version in s.changes:  # in the order they arrived
            if version == "removed":
                continue
            v = _version(version)
            if rid in last and v <= last[rid]:
                order_errors += 1
            last[rid] = v
        subscriber_rows.append({"index": s.index, "member": s.member.url, "collection": s.collection,
                                "expected": len(expected), "received": len(received & expected),
                                "missing": len(expected - received), "unexpected": len(received - expected),
                                "duplicates": s.duplicates, "order_errors": order_errors, "closed": s.closed})
    # 3. Nothing lost: every resource registered is listed at its latest accepted version.
    lost = wrong_version = 0
    for node in population:
        for kind, rid in node:
            if rid not in listed:
                lost += 1
            elif rid in latest and listed[rid] != latest[rid]:
                wrong_version += 1
    # 4. Errors after the etcd leader was killed, anywhere; errors at surviving members after the member was killed.
    after_etcd = [s for s in samples if s[4] >= etcd_killed_at and not 200 <= s[6] < 300]
    after_member_at_survivors = [s for s in samples if killed_at <= s[4] < etcd_killed_at and s[2] != victim_index
                                 and not 200 <= s[6] < 300]
    polled_errors_after_etcd = [p for p in polled if p[0] >= etcd_killed_at and p[2] != 200]
    polled_errors = [p for p in polled if p[2] != 200]
    beats_after_etcd = [s for s in samples if s[0] == "beat" and s[4] >= etcd_killed_at]
    changes_after_etcd = [s for s in samples if s[0] == "change" and s[4] >= etcd_killed_at]
    change_latency = sorted(s[5] - s[4] for s in samples if s[0] == "change" and 200 <= s[6] < 300)
    change_latency_before = sorted(s[5] - s[4] for s in samples
                                   if s[0] == "change" and 200 <= s[6] < 300 and s[5] < etcd_killed_at)
    beat_latency_after_etcd = sorted(s[5] - s[4] for s in beats_after_etcd if s[6] == 200)
    # For comparison with the failover time: heartbeats' answers in the 10 s before the kill, when nothing failed.
    beat_latency_before = sorted(s[5] - s[4] for s in samples
                                 if s[0] == "beat" and s[6] == 200 and killed_at - 10 <= s[4] < killed_at)
    timeouts = sum(1 for s in samples if s[6] == -1 and s[5] - s[4] >= opts.answer_timeout)
    # The slowest changes answered, where they fell (seconds from the member's kill) and at which member.
    slowest = sorted((s for s in samples if s[0] == "change" and 200 <= s[6] < 300), key=lambda s: s[4] - s[5])[:8]
    slow_changes = [{"answer_ms": (s[5] - s[4]) * 1000, "sent_after_member_kill_s": s[4] - killed_at,
                     "member": s[2], "kind": s[7][0]} for s in slowest]
    return {
        "slowest_changes": slow_changes,
        "failover": {"nodes_at_victim": len(affected), "missed_next_slot": len(missed),
                     "failover_time": _distribution(failover_ms), "kill_to_heartbeat": _distribution(since_kill),
                     "gap_between_heartbeats": _distribution(gaps), "failover_events": len(report["failovers"]),
                     "heartbeat_answer_before_kill": _distribution(beat_latency_before)},
        "client_timeouts": timeouts,
        "expired_nodes": len(report["expired"]),
        "resources": {"registered": sum(len(node) for node in population), "listed": len(listed), "lost": lost,
                      "wrong_version": wrong_version},
        "changes": {"sent": report["changes_sent"], "accepted": len(accepted),
                    "rate_per_s": len(accepted) / (changes_until - changes_from),
                    "answer": _distribution(change_latency),
                    "answer_before_etcd_kill": _distribution(change_latency_before)},
        "subscribers": {"on_survivors": len(survivors), "on_victim": len(subscribers) - len(survivors),
                        "victims_closed": sum(1 for s in subscribers if s.member.port == victim.port and s.closed),
                        "expected_total": sum(r["expected"] for r in subscriber_rows),
                        "missing_total": sum(r["missing"] for r in subscriber_rows),
                        "unexpected_total": sum(r["unexpected"] for r in subscriber_rows),
                        "duplicates_total": sum(r["duplicates"] for r in subscriber_rows),
                        "order_errors_total": sum(r["order_errors"] for r in subscriber_rows),
                        "closed": [r for r in subscriber_rows if r["closed"]], "rows": subscriber_rows},
        "errors_at_survivors_after_member_kill": len(after_member_at_survivors),
        "etcd_kill": {"heartbeats": len(beats_after_etcd), "changes": len(changes_after_etcd),
                      "query_reads": sum(1 for p in polled if p[0] >= etcd_killed_at),
                      "error_answers": len(after_etcd) + len(polled_errors_after_etcd),
                      "heartbeat_answer": _distribution(beat_latency_after_etcd),
                      "samples": [str(s[:7]) for s in after_etcd[:5]] + [str(p) for p in polled_errors_after_etcd[:5]]},
        "query_reads": len(polled), "query_read_errors": len(polled_errors),
        "node_errors": report["errors"],
    }
