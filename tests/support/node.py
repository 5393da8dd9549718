"""A Node on a Clock, and registries on a FakeNetwork for it to register with."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher

from tests.support.fake_network import FakeNetwork, Host
from nmos_ref.web.root import root_resource
from nmos_ref.api.registration import RegistrationAPI
from nmos_ref.model.store import Registry
from nmos_ref.model.tai import TAIClock, format_tai
from nmos_ref.model.versions import ALL_VERSIONS
from nmos_ref.node.state import NodeModel
from nmos_ref.node.registration_client import RegistrationClient
from nmos_ref.node.registries import Candidate
from nmos_ref.web.backoff import Backoff
from nmos_ref.node.demo import demo_description
from nmos_ref.node.description import Endpoint, build
from nmos_ref.validation import Schemas

SCHEMAS = Schemas()
START = 1_700_000_000.0  # Unix time the clocks start at
NODE_ENDPOINT = Endpoint("192.0.2.10", 8236)


def demo_model(clock: Clock, versions: Sequence[str] = ALL_VERSIONS, seed: str = "test-seed",
               description: dict[str, Any] | None = None) -> NodeModel:
    tai = TAIClock(clock)
    built = build(description or demo_description(seed, "node-1"), seed=seed, stamp=format_tai(tai.stamp()),
                  hostname="node-1", endpoints=[], versions=versions, schemas=SCHEMAS)
    model = NodeModel(built, tai, versions, SCHEMAS)
    model.set_endpoints([NODE_ENDPOINT])
    return model


def registry_host(network: FakeNetwork, name: str, registry: Registry,
                  versions: Sequence[str] = ALL_VERSIONS) -> Host:
    api = RegistrationAPI(registry, SCHEMAS, list(versions), network.clock)
    return network.serve(name, root_resource({"registration": api.app.resource()}))


class Rig:
    """A demo Node's registration client and registries on a fake network; `names` in priority order."""

    def __init__(self, names: Sequence[str] = ("reg-a:8235",), *, shared: Sequence[str] = (),
                 versions: Sequence[str] = ALL_VERSIONS, node_versions: Sequence[str] = ALL_VERSIONS,
                 timeout: float = 4.0, candidates: Sequence[Candidate] | None = None, seed: int = 1) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.network = FakeNetwork(self.clock)
        self.registries: dict[str, Registry] = {}
        cluster = Registry()
        for name in names:
            registry = cluster if name in shared else Registry()
            self.registries[name] = registry
            registry_host(self.network, name, registry, versions)
        self.model = demo_model(self.clock, node_versions)
        self.candidates = list(candidates) if candidates is not None else [
            Candidate(f"http://{name}", index) for index, name in enumerate(names)]
        self.client = RegistrationClient(self.model, self.network, self.clock, lambda: succeed(self.candidates),
                                         timeout=timeout, rng=random.Random(seed), backoff=Backoff())

    def host(self, name: str) -> Host:
        return self.network.hosts[name]

    def registered(self, name: str) -> dict[tuple[str, str], dict[str, Any]]:
        """What registry `name` holds, (type, id) -> data."""
        registry = self.registries[name]
        return {(kind, record.id): record.data for kind in ("node", "device", "source", "flow", "sender", "receiver")
                for record in registry.resources(kind)}

    def shown(self, version: str = "v1.3") -> dict[tuple[str, str], Any]:
        return {(view.kind, view.id): view.data for view in self.model.registrable(version)}


class Events:
    """Log events of the registration client, while in a `with` block."""

    def __init__(self, namespace: str = "nmos_ref.node.registration_client") -> None:
        self.namespace = namespace
        self.events: list[LogEvent] = []

    def _observe(self, event: LogEvent) -> None:
        if event.get("log_namespace") == self.namespace:
            self.events.append(event)

    def __enter__(self) -> Events:
        globalLogPublisher.addObserver(self._observe)
        return self

    def __exit__(self, *exc: Any) -> None:
        globalLogPublisher.removeObserver(self._observe)

    def texts(self) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(event) for event in self.events]
