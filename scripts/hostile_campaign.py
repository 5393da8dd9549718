#!/usr/bin/env python3
"""A longer hostile-input campaign against a registry on loopback (issue #11): the generators of
tests/support/hostile.py, run pass after pass with new seeds until --requests are sent or --time-limit passes.

Each pass runs every category with its own seed (`<seed>:<pass>:<category>`), a case of each in turn, so the fixed
cases repeat, the random ones vary and any budget covers every category; after each category every Query API
collection at every version must answer 200 with strict JSON, and after each pass the Nodes the cases registered
are deleted again (so the listings do not grow from pass to pass).
Every answer is judged by the rules of tests/api/test_hostile.py: no 5xx (501/505 only where the case allows them), no
3xx, CORS on every answer, every error the NMOS error JSON, strict JSON bodies, and the store unchanged by every
refused request.

    scripts/hostile_campaign.py [--requests 16000] [--seed 11] [--time-limit 900]
        starts its own registry in this process (the exact store is compared around each refused request, and the
        server's connections must all close after each category)
    scripts/hostile_campaign.py --port 8235 [--host 127.0.0.1]
        against a running `twistd -n nmos-ref registry` on loopback (the store is compared through the Query API,
        and the campaign's Nodes are kept alive with heartbeats)

Prints the requests sent per category, 5xx answers, non-NMOS error answers, store changes and other problems, and
exits 1 if any rule was broken (2 on a usage error). Loopback only: it refuses any other address. It needs the
test extras (`pip install -e '.[test]'`) and, for the official error schema, ../shared/amwa.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the tests package

from tests.support.hostile import (  # noqa: E402
    CATEGORIES,
    COLLECTIONS,
    TIMEOUT,
    LocalRegistry,
    Problem,
    Target,
    collections_problems,
    run_case,
    seed,
    summarise,
)
from tests.support.samples import VERSIONS  # noqa: E402
from treq.client import HTTPClient  # noqa: E402
from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.logger import globalLogBeginner, textFileLogObserver  # noqa: E402
from twisted.web.client import Agent, HTTPConnectionPool  # noqa: E402

COLUMNS = (("5xx", "5xx"), ("non-NMOS", "not-nmos-error"), ("store", "store-changed"))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16000, help="stop after about this many (default 16000)")
    parser.add_argument("--seed", type=int, default=11, help="the campaign's seed (default 11)")
    parser.add_argument("--port", type=int, help="a running registry's port (default: start one in this process)")
    parser.add_argument("--host", default="127.0.0.1", help="its loopback address (default 127.0.0.1)")
    parser.add_argument("--time-limit", type=float, default=900.0, help="seconds before stopping (default 900)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT,
                        help=f"seconds a request may go unanswered (default {TIMEOUT})")
    parser.add_argument("--scale", type=int, default=3, help="random cases per category and pass (default 3)")
    parser.add_argument("--categories", default=",".join(CATEGORIES),
                        help=f"comma-separated subset of {','.join(CATEGORIES)}")
    parser.add_argument("--show", type=int, default=20, help="problems shown per rule (default 20)")
    parser.add_argument("--log", action="store_true", help="print the registry's log (default: only count its "
                                                           "logged failures)")
    options = parser.parse_args(argv)
    try:
        if not ipaddress.ip_address(options.host).is_loopback:
            parser.error(f"--host {options.host} is not a loopback address: this campaign only runs on loopback")
    except ValueError:
        parser.error(f"--host must be a loopback IP address, not {options.host!r}")
    unknown = set(options.categories.split(",")) - set(CATEGORIES)
    if unknown:
        parser.error(f"unknown categories: {', '.join(sorted(unknown))}")
    if options.requests < 1 or options.scale < 1:
        parser.error("--requests and --scale must be positive")
    return options


class Remote:
    """A registry running elsewhere on loopback: the store as the Query API shows it (every resource at the lowest
    version served, which lists resources held at every higher minor too, and every subscription), and heartbeats
    for every Node listed so that none expires during the campaign."""

    def __init__(self, reactor: Any, http: HTTPClient, base: str) -> None:
        self.reactor = reactor
        self.http = http
        self.base = base
        self.versions: list[str] = list(VERSIONS)
        self.held: dict[str, str] = {}  # node id -> the version it is registered at, once found
        self.nodes: set[str] = set()
        self.loop = task.LoopingCall(self._heartbeat)
        self.loop.clock = reactor

    async def start(self) -> None:
        response = await self.http.get(f"{self.base}/query/")
        listing = json.loads(await response.content())
        self.versions = [version.rstrip("/") for version in listing if version.rstrip("/") in VERSIONS]
        self.loop.start(4.0, now=False)

    async def _get(self, path: str) -> Any:
        response = await self.http.get(f"{self.base}{path}")
        return response.code, await response.content()

    async def snapshot(self) -> list[tuple[Any, ...]]:
        state: list[tuple[Any, ...]] = []
        lowest = self.versions[0]
        for collection in COLLECTIONS[:-1]:
            code, raw = await self._get(f"/query/{lowest}/{collection}")
            items = json.loads(raw) if code == 200 else []
            state += sorted((collection, item.get("id"), item.get("version")) for item in items)
            if collection == "nodes":
                self.nodes = {item.get("id") for item in items}
        for version in self.versions:
            code, raw = await self._get(f"/query/{version}/subscriptions")
            state += sorted(("subscription", item.get("id"), version) for item in (json.loads(raw) if code == 200
                                                                                     else []))
        return state

    def nodes_held(self) -> list[tuple[str, str | None]]:
        return [(node_id, self.held.get(node_id)) for node_id in self.nodes]

    async def _heartbeat(self) -> None:
        for node_id in list(self.nodes):
            for version in [self.held[node_id]] if node_id in self.held else self.versions:
                try:
                    response = await self.http.post(f"{self.base}/registration/{version}/health/nodes/{node_id}")
                    await response.content()
                except Exception:
                    return
                if response.code == 200:
                    self.held[node_id] = version
                    break

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()


async def prune(http: HTTPClient, base: str, target: Target, nodes: list[tuple[str, str | None]],
                versions: list[str]) -> None:
    """Delete the Nodes (and so everything below them) that the cases registered, so that the store, and with it
    every listing, does not grow from pass to pass."""
    keep = {family.node["id"] for family in target.families.values()} | {target.spare.node["id"]}
    for node_id, version in nodes:
        if node_id in keep:
            continue
        for candidate in [version] if version else versions:
            response = await http.delete(f"{base}/registration/{candidate}/resource/nodes/{node_id}")
            await response.content()
            if response.code == 204:
                break


async def campaign(reactor: Any, options: argparse.Namespace) -> int:
    pool = HTTPConnectionPool(reactor, persistent=True)
    http = HTTPClient(Agent(reactor, pool=pool))
    local = LocalRegistry(reactor) if options.port is None else None
    remote = None
    try:
        port = await local.start() if local is not None else options.port
        base = f"http://{options.host}:{port}/x-nmos"
        target: Target = await seed(http, base, options.host, port)
        if local is not None:
            snapshot: Any = local.snapshot
        else:
            remote = Remote(reactor, http, base)
            await remote.start()
            snapshot = remote.snapshot
        categories = options.categories.split(",")
        sent: Counter[str] = Counter()
        problems: dict[str, list[Problem]] = defaultdict(list)
        started = time.monotonic()

        def keep_going() -> bool:
            return sum(sent.values()) < options.requests and time.monotonic() - started < options.time_limit

        async def after(category: str) -> list[Problem]:
            """Once a category's cases are done: every collection serves strict JSON, nothing unservable is
            stored, and the server has closed its connections."""
            found = await collections_problems(http, base, category)
            await pool.closeCachedConnections()
            if local is not None:
                found += local.unservable(category)
                found += await local.settled(category)
            return found

        number = 0
        while keep_going():
            # Round robin, a case of each category in turn, so that any budget covers every category.
            running = {category: iter(CATEGORIES[category](
                target, random.Random(f"{options.seed}:{number}:{category}"), options.scale))
                for category in categories}
            while running and keep_going():
                for category, cases in list(running.items()):
                    case = next(cases, None)
                    if case is None or not keep_going():
                        del running[category]
                        problems[category] += await after(category)
                        continue
                    problems[category] += await run_case(reactor, target, case, snapshot, options.timeout)
                    sent[category] += 1 + (case.same_as is not None)
            for category in running:
                problems[category] += await after(category)
            if local is not None:
                await prune(http, base, target, local.nodes(), list(VERSIONS))
            else:
                assert remote is not None
                await remote.snapshot()  # refreshes the Nodes listed
                await prune(http, base, target, remote.nodes_held(), remote.versions)
            await pool.closeCachedConnections()
            number += 1
            print(f"pass {number}: {sum(sent.values())} requests, "
                  f"{sum(map(len, problems.values()))} problems, {time.monotonic() - started:.0f} s", flush=True)
        report(sent, problems, options.show, number, time.monotonic() - started, options)
        return 1 if any(problems.values()) else 0
    finally:
        if remote is not None:
            remote.stop()
        await pool.closeCachedConnections()
        if local is not None:
            await local.stop()


def report(sent: Counter[str], problems: dict[str, list[Problem]], show: int, passes: int, seconds: float,
           options: argparse.Namespace) -> None:
    print(f"\nhostile campaign: seed {options.seed}, {passes} passes, {sum(sent.values())} requests in "
          f"{seconds:.1f} s, against {'a registry in this process' if options.port is None else options.port}")
    header = f"{'category':>14} {'requests':>9}" + "".join(f" {name:>9}" for name, _ in COLUMNS) + f" {'other':>9}"
    print(header)
    totals: Counter[str] = Counter()
    for category in sent:
        found = problems.get(category, [])
        counts = [sum(1 for p in found if p.rule == rule) for _, rule in COLUMNS]
        other = len(found) - sum(counts)
        totals.update({"requests": sent[category], "other": other, **{rule: n for (_, rule), n in
                                                                        zip(COLUMNS, counts)}})
        print(f"{category:>14} {sent[category]:>9}" + "".join(f" {n:>9}" for n in counts) + f" {other:>9}")
    print(f"{'total':>14} {totals['requests']:>9}" + "".join(f" {totals[rule]:>9}" for _, rule in COLUMNS) +
          f" {totals['other']:>9}")
    every = [problem for found in problems.values() for problem in found]
    if every:
        # the same case can repeat across passes: show each distinct problem once
        distinct = list(dict.fromkeys(every))
        print(f"\n{len(every)} problems ({len(distinct)} distinct):\n{summarise(distinct, show)}")
    else:
        print("\nno problems")


class FailureCount:
    """A log observer that counts logged failures (a handler's unexpected exception is one)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, event: dict[str, Any]) -> None:
        if "log_failure" in event:
            self.count += 1


def main(argv: list[str]) -> None:
    options = parse(argv)
    failures = FailureCount()
    observers: list[Any] = [failures] + ([textFileLogObserver(sys.stderr)] if options.log else [])
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)

    async def run(reactor: Any) -> None:
        code = await campaign(reactor, options)
        print(f"failures logged by the registry: {failures.count}" if options.port is None else "")
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main(sys.argv[1:])
