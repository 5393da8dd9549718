"""What an operator's tools read of a running process: `/metrics` in the Prometheus text format (0.0.4), `/health`
and `/ready`.

The HTTP edge counts every request when it finishes (`Metrics.request_done`, the site's log hook: a path split,
two dict updates and a bisect, nothing on the request's own path); everything else is read when `/metrics` is
scraped, from counters the parts keep anyway or from collectors the wiring registers (`Metrics.collect`). Written
here rather than with prometheus-client: the exposition format is a few lines of text, and the request hook must
stay cheaper than a heartbeat's noise.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from time import perf_counter
from typing import Any

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from nmos_ref.model.store import Change, Registry
from nmos_ref.model.versions import ALL_VERSIONS, TYPES

# Seconds: from a request read whole to its answer written (a heartbeat takes about 0.1 ms of CPU).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
APIS = ("registration", "query", "node")  # /x-nmos/<api>/...; any other path counts as "other"

# One metric family: (name, type, help, samples); a sample is (labels, value), labels as (name, value) pairs.
Sample = tuple[tuple[tuple[str, str], ...], float]
Family = tuple[str, str, str, Sequence[Sample]]


class Metrics:
    """The process's metrics: requests counted and timed per API at the HTTP edge, and collectors read at scrape."""

    def __init__(self, clock: Callable[[], float] = perf_counter) -> None:
        self.clock = clock
        self.requests: dict[str, dict[int, int]] = {api: {} for api in (*APIS, "other")}  # api -> status -> count
        # api -> [count per bucket (not cumulative; the last is +Inf), sum of seconds]
        self.latency: dict[str, list[float]] = {api: [0.0] * (len(LATENCY_BUCKETS) + 2) for api in (*APIS, "other")}
        self._collectors: list[Callable[[], Iterable[Family]]] = []

    def request_done(self, request: IRequest) -> None:
        """Count a finished request (the site calls it as its log hook; about 1 us)."""
        path = request.path
        if path.startswith(b"/x-nmos/registration"):
            api = "registration"
        elif path.startswith(b"/x-nmos/query"):
            api = "query"
        elif path.startswith(b"/x-nmos/node"):
            api = "node"
        else:
            api = "other"
        counts = self.requests[api]
        code = request.code
        counts[code] = counts.get(code, 0) + 1
        began = getattr(request, "began", None)
        if began is None:  # refused before it was processed (a malformed request line)
            return
        elapsed = self.clock() - began
        row = self.latency[api]
        row[bisect_left(LATENCY_BUCKETS, elapsed)] += 1
        row[-1] += elapsed

    def collect(self, collector: Callable[[], Iterable[Family]]) -> None:
        """Read `collector` at every scrape: it returns metric families."""
        self._collectors.append(collector)

    def families(self) -> Iterable[Family]:
        yield ("nmos_http_requests_total", "counter", "HTTP requests answered, by API and status",
               [((("api", api), ("code", str(code))), count) for api, counts in sorted(self.requests.items())
                for code, count in sorted(counts.items())])
        buckets: list[Sample] = []
        for api, row in sorted(self.latency.items()):
            if not any(row[:-1]):
                continue
            total = 0.0
            for bound, count in zip((*LATENCY_BUCKETS, math.inf), row):
                total += count
                buckets.append(((("api", api), ("le", _number(bound))), total))
            buckets.append(((("api", api), ("sum", "")), row[-1]))
            buckets.append(((("api", api), ("count", "")), total))
        yield ("nmos_http_request_duration_seconds", "histogram",
               "Time from a request read to its answer written, by API", buckets)
        for collector in self._collectors:
            yield from collector()

    def render(self) -> str:
        """Every family in the Prometheus text format."""
        lines = []
        for name, kind, text, samples in self.families():
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                suffix = ""
                if kind == "histogram":
                    special = labels[-1][0]
                    if special in ("sum", "count"):
                        suffix, labels = f"_{special}", labels[:-1]
                    else:
                        suffix = "_bucket"
                shown = ",".join(f'{key}="{_escape(str(val))}"' for key, val in labels)
                lines.append(f"{name}{suffix}{{{shown}}} {_number(value)}" if shown else
                             f"{name}{suffix} {_number(value)}")
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class StoreCounts:
    """The registry's resources per type and API version, and its changes by kind, counted from its change feed
    (cheaper than walking 100,000 records at each scrape); heartbeats are the store's own count."""

    CHANGES = {"register": "created", "delete": "deleted", "cascade": "deleted_below", "expire": "expired"}

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.held: dict[tuple[str, str], int] = {}
        self.changes: dict[str, int] = {}
        for kind in TYPES:
            for record in registry.resources(kind):
                key = (kind, record.api_version)
                self.held[key] = self.held.get(key, 0) + 1
        registry.feed.subscribe(self.changed)

    def changed(self, changes: Sequence[Change]) -> None:
        held, counted = self.held, self.changes
        for change in changes:
            pre, post = change.pre, change.post
            if pre is not None:
                key = (change.kind, pre.api_version)
                held[key] -= 1
            if post is not None:
                key = (change.kind, post.api_version)
                held[key] = held.get(key, 0) + 1
            what = "updated" if pre is not None and post is not None else self.CHANGES.get(change.cause, change.cause)
            counted[what] = counted.get(what, 0) + 1

    def families(self) -> Iterable[Family]:
        yield ("nmos_registry_resources", "gauge", "Resources held, by type and the API version registered at",
               [((("type", kind), ("api_version", version)), self.held.get((kind, version), 0))
                for kind in TYPES for version in ALL_VERSIONS])
        yield ("nmos_registry_changes_total", "counter",
               "Changes of the store: created, updated, deleted (by DELETE), deleted_below (with a parent), expired",
               [((("change", what),), self.changes.get(what, 0))
                for what in ("created", "updated", "deleted", "deleted_below", "expired")])
        yield ("nmos_registry_heartbeats_total", "counter", "Heartbeats answered 200",
               [((), self.registry.heartbeats)])


# --- the resources


class MetricsResource(Resource):
    """GET /metrics: the text format."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return self.metrics.render().encode("utf-8")


class CheckResource(Resource):
    """GET /health or /ready: 200 `{"status": "ok"}` while every check passes, else 503 with what fails; a check is
    a function returning None (fine) or the reason it is not."""

    isLeaf = True

    def __init__(self, checks: Sequence[Callable[[], str | None]] = ()) -> None:
        super().__init__()
        self.checks = list(checks)

    def render_GET(self, request: IRequest) -> bytes:
        problems = [problem for problem in (check() for check in self.checks) if problem]
        request.setResponseCode(503 if problems else 200)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        body: dict[str, Any] = {"status": "unavailable" if problems else "ok"}
        if problems:
            body["problems"] = problems
        return json.dumps(body).encode()

    render_HEAD = render_GET


def subscription_families(manager: Any) -> Iterable[Family]:
    """The Query API's WebSocket subscriptions (a `nmos_ref.ws.subscriptions.SubscriptionManager`)."""
    subscriptions, sockets, backlog = manager.stats()
    yield ("nmos_query_subscriptions", "gauge", "Query API subscriptions held", [((), subscriptions)])
    yield ("nmos_query_websockets", "gauge", "Subscription WebSockets open", [((), sockets)])
    yield ("nmos_query_websocket_backlog_bytes", "gauge", "Bytes of events waiting in the open sockets' backlogs",
           [((), backlog)])
    yield ("nmos_query_websocket_overflows_total", "counter",
           "Sockets closed because their client stopped reading and the backlog passed its limit",
           [((), manager.dropped)])


def operations(metrics: Metrics, ready: CheckResource) -> dict[str, Resource]:
    """/metrics, /health (the process serves: always 200 when it answers) and /ready (`ready`'s checks)."""
    return {"metrics": MetricsResource(metrics), "health": CheckResource(), "ready": ready}
