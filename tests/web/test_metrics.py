"""/metrics, /health and /ready (nmos_ref/web/metrics.py): requests counted and timed at the HTTP edge, the store's
resources and changes, the subscriptions' sockets, in the Prometheus text format; over a real registry on
loopback too."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock

from nmos_ref.model.store import Registry
from nmos_ref.web.metrics import LATENCY_BUCKETS, CheckResource, Metrics, StoreCounts
from nmos_ref.wiring.node import node_families
from nmos_ref.wiring.registry import not_listening
from tests.model.test_store import START, big_node, family, res
from tests.support.cases import SocketTest, UnitTest
from tests.support.samples import node
from tests.support.websockets import Served

SAMPLE = re.compile(r'^([a-z_]+)(?:\{(.*)\})? (\S+)$')


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of a text exposition, every line checked against the format's grammar."""
    samples = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        found = SAMPLE.match(line)
        assert found is not None, line
        name, labels, value = found.groups()
        pairs = tuple(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', labels or ""))
        samples[(name, pairs)] = float(value)
    return samples


def request(path: bytes, code: int, began: float | None) -> Any:
    return SimpleNamespace(path=path, code=code, began=began)


class MetricsTests(UnitTest):
    def test_requests_are_counted_and_timed_per_api(self) -> None:
        clock = Clock()
        metrics = Metrics(clock.seconds)
        clock.advance(100)
        metrics.request_done(request(b"/x-nmos/registration/v1.3/health/nodes/x", 200, 100 - 0.0003))
        metrics.request_done(request(b"/x-nmos/registration/v1.3/resource", 201, 100 - 0.02))
        metrics.request_done(request(b"/x-nmos/query/v1.3/nodes", 200, 100 - 3.0))
        metrics.request_done(request(b"/nowhere", 404, None))  # refused at the edge: counted, not timed
        samples = parse(metrics.render())
        assert samples[("nmos_http_requests_total", (("api", "registration"), ("code", "200")))] == 1
        assert samples[("nmos_http_requests_total", (("api", "registration"), ("code", "201")))] == 1
        assert samples[("nmos_http_requests_total", (("api", "query"), ("code", "200")))] == 1
        assert samples[("nmos_http_requests_total", (("api", "other"), ("code", "404")))] == 1
        bucket = "nmos_http_request_duration_seconds_bucket"
        assert samples[(bucket, (("api", "registration"), ("le", "0.0005")))] == 1
        assert samples[(bucket, (("api", "registration"), ("le", "0.01")))] == 1
        assert samples[(bucket, (("api", "registration"), ("le", "0.025")))] == 2  # cumulative
        assert samples[(bucket, (("api", "query"), ("le", "2.5")))] == 0
        assert samples[(bucket, (("api", "query"), ("le", "+Inf")))] == 1
        assert samples[("nmos_http_request_duration_seconds_count", (("api", "registration"),))] == 2
        assert abs(samples[("nmos_http_request_duration_seconds_sum", (("api", "registration"),))] - 0.0203) < 1e-9
        assert len([key for key in samples if key[0] == bucket and key[1][0] == ("api", "query")]) == \
            len(LATENCY_BUCKETS) + 1

    def test_help_type_and_escaping(self) -> None:
        metrics = Metrics()
        metrics.collect(lambda: [("x_total", "counter", "Things", [((("label", 'a "b"\\c\nd'),), 3)])])
        text = metrics.render()
        assert "# HELP x_total Things\n# TYPE x_total counter\n" in text
        assert 'x_total{label="a \\"b\\"\\\\c\\nd"} 3\n' in text

    def test_store_counts_follow_the_feed(self) -> None:
        registry = Registry()
        counts = StoreCounts(registry)
        items = family(registry, now=START)
        node_id = items["node"]["id"]
        registry.register("node", dict(items["node"], version="101:0", label="new"), "v1.3", now=START + 1)
        registry.heartbeat(node_id, "v1.3", now=START + 2)
        other = res()
        registry.register("node", other, "v1.2", now=START)
        registry.delete("node", other["id"], "v1.2")
        big_node(registry, devices=1, senders=2, now=START)
        registry.collect_garbage(START + 100)
        samples = parse(_render(counts))
        held = {labels: value for (name, labels), value in samples.items() if name == "nmos_registry_resources"}
        assert sum(held.values()) == 0 and len(held) == 6 * 4
        changes = {labels[0][1]: value for (name, labels), value in samples.items()
                   if name == "nmos_registry_changes_total"}
        assert changes == {"created": 6 + 1 + 8, "updated": 1, "deleted": 1, "deleted_below": 5 + 7,
                           "expired": 2}
        assert samples[("nmos_registry_heartbeats_total", ())] == 1

    def test_store_counts_start_from_what_is_held(self) -> None:
        registry = Registry()
        family(registry, now=START)
        counts = StoreCounts(registry)
        samples = parse(_render(counts))
        assert samples[("nmos_registry_resources", (("type", "sender"), ("api_version", "v1.3")))] == 1
        assert samples[("nmos_registry_resources", (("type", "sender"), ("api_version", "v1.2")))] == 0

    def test_checks(self) -> None:
        ready = CheckResource([lambda: None])
        answered = SimpleNamespace(code=None, headers={})
        fake = SimpleNamespace(setResponseCode=lambda code: setattr(answered, "code", code),
                               setHeader=lambda name, value: answered.headers.__setitem__(name, value))
        assert ready.render_GET(fake) == b'{"status": "ok"}' and answered.code == 200
        listeners = [SimpleNamespace(running=True, description="tcp:8235"),
                     SimpleNamespace(running=False, description="ssl:8443")]
        ready.checks.append(lambda: not_listening(listeners))
        assert ready.render_GET(fake) == b'{"status": "unavailable", "problems": ["not listening on ssl:8443"]}'
        assert answered.code == 503

    def test_node_families(self) -> None:
        client = SimpleNamespace(state="registered", failovers=2,
                                 current=SimpleNamespace(candidate=SimpleNamespace(url="http://127.0.0.1:8235")))
        oauth = SimpleNamespace(fetches={"ok": 3, "failed": 1})
        samples = parse(_render_families(node_families(client, oauth)))  # type: ignore[arg-type]
        assert samples[("nmos_node_registration_state", (("state", "registered"),))] == 1
        assert samples[("nmos_node_registration_state", (("state", "backoff"),))] == 0
        assert samples[("nmos_node_registry", (("url", "http://127.0.0.1:8235"),))] == 1
        assert samples[("nmos_node_registry_failovers_total", ())] == 2
        assert samples[("nmos_node_token_requests_total", (("outcome", "failed"),))] == 1


def _render(counts: StoreCounts) -> str:
    return _render_families(counts.families())


def _render_families(families: Any) -> str:
    metrics = Metrics()
    listed = list(families)
    metrics.collect(lambda: listed)
    return metrics.render()


class ServedMetricsTests(SocketTest):
    """A real registry on loopback: what its /metrics says after real requests and a WebSocket."""

    async def setUp(self) -> None:
        self.served = await Served().start()
        self.addCleanup(self.served.stop)

    async def test_a_registry_counts_what_it_serves(self) -> None:
        served = self.served
        data = node("v1.3")
        await served.register("v1.3", "node", data)
        beat = await served.call("POST", f"/registration/v1.3/health/nodes/{data['id']}")
        assert beat.code == 200
        assert (await served.call("GET", "/query/v1.3/nodes/" + "0" * 8)).code == 404
        subscription = await served.subscribe(resource_path="/nodes")
        client = await served.connect(subscription)
        await client.events(1)  # the sync: the socket is open
        root = served.base[:-len("/x-nmos")]
        response = await served.http.get(root + "/metrics")
        assert response.code == 200
        assert response.headers.getRawHeaders(b"content-type") == [b"text/plain; version=0.0.4; charset=utf-8"]
        samples = parse((await response.content()).decode())
        assert samples[("nmos_http_requests_total", (("api", "registration"), ("code", "201")))] == 1
        assert samples[("nmos_http_requests_total", (("api", "registration"), ("code", "200")))] == 1
        assert samples[("nmos_http_requests_total", (("api", "query"), ("code", "404")))] == 1
        assert samples[("nmos_http_request_duration_seconds_count", (("api", "registration"),))] == 2
        assert samples[("nmos_registry_resources", (("type", "node"), ("api_version", "v1.3")))] == 1
        assert samples[("nmos_registry_heartbeats_total", ())] == 1
        assert samples[("nmos_query_subscriptions", ())] == 1
        assert samples[("nmos_query_websockets", ())] == 1
        assert samples[("nmos_query_websocket_overflows_total", ())] == 0
        for path in ("/health", "/ready"):
            response = await served.http.get(root + path)
            assert response.code == 200 and await response.json() == {"status": "ok"}
        listing = await served.http.get(root + "/")
        assert await listing.json() == ["x-nmos/"]  # not listed: IS-04's root lists only x-nmos/
