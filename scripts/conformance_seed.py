#!/usr/bin/env python3
"""Register one sample Node with a registry under test and keep it alive, for conformance runs.

scripts/conformance.sh starts this inside the conformance harness's network namespace, next to the
registry. AMWA nmos-testing's IS-04-02 "auto" tests GET every `/{id}` path of the Query API with ids
taken from the listings, so an empty registry leaves them "Could Not Test". This script:

  1. waits until the Registration API answers at the version under test;
  2. POSTs a node, a device, a source, a flow, a sender and a receiver (parents first), shaped for
     that API version (our own sample values; deterministic ids per version);
  3. best effort, POSTs a persistent Query API subscription (for `/subscriptions/{id}`), retried on
     each heartbeat until the Query API accepts it;
  4. opens --ready-port (if given), so the harness can wait for the seeding before the tool starts;
  5. heartbeats the node every --interval seconds; if the registry answers 404 (node lost) it logs a
     WARNING and registers everything again.

It is bounded: it exits after --retries consecutive connection failures (the registry went away) or
after --max-seconds. Standard library only; nothing here is specific to nmos-ref.

With --auth-server URL (a registry with IS-10 authorization, as in nmos-testing's ENABLE_AUTH runs), it first
registers itself with that authorization server (RFC 7591, client_secret_basic), gets client_credentials
tokens for the registration and query scopes (renewed before they expire) and sends one with every request. The
tool starts its mock authorization server after the IUTs, so this waits for it (up to --wait-timeout).

    conformance_seed.py --version v1.3 [--registry http://127.0.0.1:8235] [--ready-port 18235]
    conformance_seed.py --version v1.0 --dump     # print the POST bodies and exit
"""
import argparse
import base64
import http.client
import json
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.parse
import uuid

VERSIONS = ("v1.0", "v1.1", "v1.2", "v1.3")
# uuid5 namespace for the sample resources' ids: the same ids on every run at one API version.
ID_NAMESPACE = uuid.UUID("6f1c52e0-2b7d-4a43-9c1e-8d1f5a0b3c47")
# The sample Node's (unserved) Node API: nothing listens there, and a registry never calls it.
NODE_HOST, NODE_PORT = "127.0.0.1", 18080
INTERFACE = "seed0"
TAI_OFFSET = 37  # IS-04 versions are TAI timestamps; TAI - UTC has been 37 s since 2017
TAG = {"nmos-ref": ["conformance-seed"]}


def at_least(version: str, other: str) -> bool:
    return VERSIONS.index(version) >= VERSIONS.index(other)


def tai_version() -> str:
    ns = time.time_ns() + TAI_OFFSET * 1_000_000_000
    return "{}:{}".format(ns // 1_000_000_000, ns % 1_000_000_000)


def rid(version: str, kind: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, "nmos-ref conformance seed {} {}".format(version, kind)))


def resources(version: str) -> list[tuple[str, dict]]:
    """The six sample resources, parents first, valid for IS-04 `version`."""
    if version not in VERSIONS:
        raise ValueError("unknown IS-04 version {!r}".format(version))
    ids = {k: rid(version, k) for k in ("node", "device", "source", "flow", "sender", "receiver")}
    stamp = tai_version()
    v11, v12, v13 = at_least(version, "v1.1"), at_least(version, "v1.2"), at_least(version, "v1.3")

    def core(kind: str, label: str) -> dict:
        data = {"id": ids[kind], "version": stamp, "label": label}
        if v11:  # v1.1 resource_core: description and tags on every resource
            data.update(description="nmos-ref conformance seed " + kind, tags=dict(TAG))
        return data

    node = core("node", "nmos-ref seed node")
    node.update(href="http://{}:{}/".format(NODE_HOST, NODE_PORT), hostname="nmos-ref-seed.local",
                caps={}, services=[])
    if v11:
        endpoint = {"host": NODE_HOST, "port": NODE_PORT, "protocol": "http"}
        if v13:
            endpoint["authorization"] = False
        node.update(api={"versions": [version], "endpoints": [endpoint]},
                    clocks=[{"name": "clk0", "ref_type": "internal"}])
    if v12:
        node["interfaces"] = [{"name": INTERFACE, "chassis_id": "nmos-ref-seed-chassis",
                               "port_id": "02-6e-6d-6f-73-01"}]

    device = core("device", "nmos-ref seed device")
    device.update(type="urn:x-nmos:device:generic", node_id=ids["node"],
                  senders=[ids["sender"]], receivers=[ids["receiver"]])
    if v11:
        device["controls"] = []

    source = core("source", "nmos-ref seed audio source")
    source.update(format="urn:x-nmos:format:audio", caps={}, device_id=ids["device"], parents=[])
    if not v11:  # v1.0 has no resource_core: description and tags are per resource
        source.update(description="nmos-ref conformance seed source", tags=dict(TAG))
    else:
        source.update(clock_name="clk0", channels=[{"label": "seed left", "symbol": "L"},
                                                   {"label": "seed right", "symbol": "R"}])

    flow = core("flow", "nmos-ref seed audio flow")
    flow.update(format="urn:x-nmos:format:audio", source_id=ids["source"], parents=[])
    if not v11:
        flow.update(description="nmos-ref conformance seed flow", tags=dict(TAG))
    else:
        flow.update(device_id=ids["device"], media_type="audio/L24", sample_rate={"numerator": 48000},
                    bit_depth=24)

    sender = core("sender", "nmos-ref seed sender")
    sender.update(flow_id=ids["flow"], transport="urn:x-nmos:transport:rtp.mcast", device_id=ids["device"],
                  manifest_href="http://{}:{}/seed/{}.sdp".format(NODE_HOST, NODE_PORT, ids["sender"]))
    if not v11:
        sender.update(description="nmos-ref conformance seed sender", tags=dict(TAG))
    if v12:
        sender.update(interface_bindings=[INTERFACE], subscription={"receiver_id": None, "active": False})

    receiver = core("receiver", "nmos-ref seed receiver")
    receiver.update(format="urn:x-nmos:format:audio", device_id=ids["device"],
                    transport="urn:x-nmos:transport:rtp.mcast", subscription={"sender_id": None})
    if not v11:
        receiver.update(description="nmos-ref conformance seed receiver", tags=dict(TAG), caps={})
    else:
        receiver["caps"] = {"media_types": ["audio/L24"]}
    if v12:
        receiver["interface_bindings"] = [INTERFACE]
        receiver["subscription"]["active"] = False

    return [("node", node), ("device", device), ("source", source), ("flow", flow),
            ("sender", sender), ("receiver", receiver)]


def subscription(version: str, secure: bool = False) -> dict:
    body = {"max_update_rate_ms": 100, "persist": True, "resource_path": "/nodes",
            "params": {"label": "nmos-ref seed node"}}
    if at_least(version, "v1.1"):
        body["secure"] = secure  # wss:// when the Query API is served over https
    return body


def log(msg: str) -> None:
    print("{} seed: {}".format(time.strftime("%H:%M:%S"), msg), flush=True)


CA_FILE: str | None = None  # --ca: the CA that HTTPS servers' certificates are checked against


def http_call(url: str, method: str, timeout: float, body: bytes | None = None,
              headers: dict | None = None) -> tuple[int, str]:
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        context = ssl.create_default_context(cafile=CA_FILE)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            u.hostname or "127.0.0.1", u.port or 443, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=timeout)
    try:
        conn.request(method, u.path + ("?" + u.query if u.query else ""), body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    except http.client.HTTPException as e:
        raise OSError("bad HTTP response: {!r}".format(e)) from e
    finally:
        conn.close()


class Tokens:
    """Bearer tokens from an IS-10 authorization server: registered once, renewed 20 s before expiry."""

    def __init__(self, server: str, timeout: float) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        self.client: tuple[str, str] | None = None
        self.token: str | None = None
        self.renew_at = 0.0

    def _json(self, url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None) -> dict:
        status, text = http_call(url, method, self.timeout, body, headers)
        if status not in (200, 201):
            raise OSError("{} {} answered {}: {}".format(method, url, status, " ".join(text.split())[:200]))
        return json.loads(text)

    def header(self) -> dict:
        """{"Authorization": "Bearer ..."}; raises OSError while the server cannot give a token."""
        if self.token is None or time.monotonic() >= self.renew_at:
            meta = self._json(self.server + "/.well-known/oauth-authorization-server")
            scope = "registration query"
            if self.client is None:
                answer = self._json(meta["registration_endpoint"], "POST", json.dumps({
                    "client_name": "nmos-ref conformance seeder", "grant_types": ["client_credentials"],
                    "response_types": ["none"], "scope": scope,
                    "token_endpoint_auth_method": "client_secret_basic"}).encode(),
                    {"Content-Type": "application/json"})
                self.client = (answer["client_id"], answer["client_secret"])
                log("registered with {} as client {}".format(self.server, self.client[0]))
            basic = base64.b64encode("{}:{}".format(*(urllib.parse.quote_plus(part) for part in self.client))
                                     .encode()).decode()
            answer = self._json(meta["token_endpoint"], "POST", urllib.parse.urlencode(
                {"grant_type": "client_credentials", "scope": scope, "client_id": self.client[0]}).encode(),
                {"Content-Type": "application/x-www-form-urlencoded", "Authorization": "Basic " + basic})
            self.token = answer["access_token"]
            self.renew_at = time.monotonic() + max(1.0, float(answer.get("expires_in", 60)) - 20)
        return {"Authorization": "Bearer " + self.token}


class RegistryClient:
    """Just enough HTTP (http.client, no proxies) to talk to one registry."""

    tokens: Tokens | None = None

    def __init__(self, base: str, version: str, timeout: float) -> None:
        u = urllib.parse.urlsplit(base)
        self.scheme = u.scheme or "http"
        self.host, self.port = u.hostname or "127.0.0.1", u.port or (443 if self.scheme == "https" else 80)
        self.root = u.path.rstrip("/")
        self.reg = "{}/x-nmos/registration/{}/".format(self.root, version)
        self.query = "{}/x-nmos/query/{}/".format(self.root, version)
        self.timeout = timeout

    def url(self, path: str) -> str:
        return "{}://{}:{}{}".format(self.scheme, self.host, self.port, path)

    def request(self, method: str, path: str, body=None) -> tuple[int, str]:
        """Returns (status, text); raises OSError when the registry cannot be reached."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.tokens is not None:
            headers.update(self.tokens.header())
        return http_call(self.url(path), method, self.timeout, data, headers)


def register_all(reg: RegistryClient, version: str) -> bool:
    ok = True
    for kind, data in resources(version):
        try:
            status, text = reg.request("POST", reg.reg + "resource", {"type": kind, "data": data})
        except OSError as e:
            log("ERROR: POST {} {}: {}".format(kind, data["id"], e))
            return False
        if status in (200, 201):
            log("registered {} {} ({})".format(kind, data["id"], status))
        else:
            ok = False
            log("ERROR: POST {} {} answered {}: {}".format(kind, data["id"], status, " ".join(text.split())[:300]))
    return ok


def subscribe(reg: RegistryClient, version: str, quiet: bool = False) -> bool:
    try:
        status, text = reg.request("POST", reg.query + "subscriptions", subscription(version, reg.scheme == "https"))
    except OSError as e:
        if not quiet:
            log("subscription not made yet: {}".format(e))
        return False
    if status in (200, 201):
        try:
            sid = json.loads(text).get("id")
        except (ValueError, AttributeError):
            sid = "?"
        log("persistent subscription {} ({})".format(sid, status))
        return True
    if not quiet:
        log("WARNING: no persistent subscription yet (retrying quietly with each heartbeat): POST subscriptions "
            "answered {}: {}".format(status, " ".join(text.split())[:200]))
    return False


def open_ready_port(port: int) -> None:
    """Listen on 127.0.0.1:port and accept-and-close, so `run.sh --wait 127.0.0.1:port` sees us ready."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(8)

    def serve() -> None:
        while True:
            conn, _ = srv.accept()
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    log("ready (listening on 127.0.0.1:{})".format(port))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--version", required=True, choices=VERSIONS, help="IS-04 API version under test")
    ap.add_argument("--registry", default="http://127.0.0.1:8235", help="registry base URL (before /x-nmos)")
    ap.add_argument("--ready-port", type=int, default=0, help="listen here once the resources are POSTed")
    ap.add_argument("--interval", type=float, default=5.0, help="heartbeat interval, s (IS-04 default 5)")
    ap.add_argument("--wait-timeout", type=float, default=60.0, help="how long to wait for the registry, s")
    ap.add_argument("--retries", type=int, default=3, help="consecutive connection failures before giving up")
    ap.add_argument("--max-seconds", type=float, default=7200.0, help="exit after this long in any case")
    ap.add_argument("--http-timeout", type=float, default=2.0)
    ap.add_argument("--no-subscription", action="store_true", help="do not make the persistent subscription")
    ap.add_argument("--auth-server", help="IS-10 authorization server to get bearer tokens from (issuer URL)")
    ap.add_argument("--ca", help="PEM file of the CA to check HTTPS servers against (default: the system's)")
    ap.add_argument("--dump", action="store_true", help="print the registration bodies as JSON and exit")
    args = ap.parse_args()

    if args.dump:
        json.dump({"resources": [{"type": k, "data": d} for k, d in resources(args.version)],
                   "subscription": subscription(args.version)}, sys.stdout, indent=2)
        print()
        return 0

    global CA_FILE
    CA_FILE = args.ca
    started = time.monotonic()
    reg = RegistryClient(args.registry, args.version, args.http_timeout)
    if args.auth_server:
        reg.tokens = Tokens(args.auth_server, args.http_timeout)
    deadline = started + args.wait_timeout
    while True:
        try:
            status, _ = reg.request("GET", reg.reg)
            if status == 200:
                break
            problem = "GET {} answered {}".format(reg.reg, status)
        except OSError as e:
            problem = str(e)
        if time.monotonic() > deadline:
            log("ERROR: no Registration API at {} after {:.0f}s ({})".format(reg.url(reg.reg), args.wait_timeout,
                                                                            problem))
            if args.ready_port:  # let the run go on at once (the tool reports what it finds), then leave
                open_ready_port(args.ready_port)
                time.sleep(30)
            return 1
        time.sleep(0.3)

    if not register_all(reg, args.version):
        log("ERROR: seeding incomplete; /{id} auto tests may be Could Not Test")
    subscribed = args.no_subscription or subscribe(reg, args.version)
    if args.ready_port:
        open_ready_port(args.ready_port)

    node_id = rid(args.version, "node")
    failures = 0
    beats = {"ok": 0, "other": 0}

    def leave(why: str) -> int:
        log("{}: {} heartbeats answered 200, {} otherwise; exiting".format(why, beats["ok"], beats["other"]))
        return 0

    # the harness ends the run with SIGTERM
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(leave("stopped")))
    next_beat = time.monotonic() + args.interval
    while time.monotonic() - started < args.max_seconds:
        time.sleep(max(0.0, next_beat - time.monotonic()))
        next_beat += args.interval
        try:
            status, text = reg.request("POST", "{}health/nodes/{}".format(reg.reg, node_id))
        except OSError as e:
            failures += 1
            log("heartbeat failed ({}/{}): {}".format(failures, args.retries, e))
            if failures >= args.retries:
                return leave("registry gone")
            continue
        failures = 0
        beats["ok" if status == 200 else "other"] += 1
        if status == 404:
            log("WARNING: heartbeat answered 404: the registry lost our node; registering again")
            register_all(reg, args.version)
        elif status != 200:
            log("WARNING: heartbeat answered {}: {}".format(status, " ".join(text.split())[:200]))
        if not subscribed:
            subscribed = subscribe(reg, args.version, quiet=True)
    return leave("--max-seconds reached")


if __name__ == "__main__":
    sys.exit(main())
