"""The IS-04 Node API, every served version at once, mounted at `/x-nmos/node/`; and the SDP files of the Node's
senders, mounted at `/x-nmos-ref/` (IS-04 "APIs": other content MAY share the port, outside `/x-nmos`).

Handlers parse and shape; what each version shows lives in `nmos_ref.node.state`, connecting Receivers in
`nmos_ref.node.target`.
"""

from __future__ import annotations

from klein import Klein
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from nmos_ref.api.versioned import VersionedAPI, add_common_routes, add_error_handlers, options_response
from nmos_ref.model.versions import SINGULARS
from nmos_ref.node.sdp import make_sdp
from nmos_ref.node.state import NodeModel, ResourceAtVersion
from nmos_ref.node.target import ReceiverTargets, TargetRefused
from nmos_ref.validation import Schemas
from nmos_ref.web.errors import NmosError
from nmos_ref.web.responses import Encoded, json_list, json_response, read_json, set_cors

log = Logger()

BASE = ["self/", "sources/", "flows/", "devices/", "senders/", "receivers/"]  # NodeAPI.raml, nodeapi-base.json


class NodeAPI(VersionedAPI):
    """Serves a NodeModel; PUT on a Receiver's target goes to ReceiverTargets."""

    app = Klein()
    add_common_routes(app)
    api_name = "Node API"
    base = BASE

    def __init__(self, model: NodeModel, targets: ReceiverTargets, schemas: Schemas | None = None) -> None:
        self.model = model
        self.targets = targets
        self.schemas = schemas or model.schemas
        self.versions = list(model.versions)

    def _kind(self, collection: str) -> str:
        kind = SINGULARS.get(collection)
        if kind is None or kind == "node":
            raise NmosError(404, f"No collection {collection!r}", f"collections: {', '.join(BASE)}")
        return kind

    def _shown(self, kind: str, rid: str, version: str) -> ResourceAtVersion:
        """The resource at `version`, or 404: the Node has none, or hides it at this version. (The v1.3 RAML's 409
        is for a resource held at a higher version than asked; this Node holds everything at v1.3 and hides
        nothing there, and v1.0-v1.2 define no 409.)"""
        view = self.model.view(kind, rid, version)
        if view is None:
            raise NmosError(404, f"The Node has no {kind} {rid}")
        if view.hidden is not None:
            lowest = self.model.lowest_showing(kind, rid)
            shown = f"; it is shown from {lowest}" if lowest else ""
            raise NmosError(404, f"The Node has no {kind} {rid} at {version}", view.hidden + shown)
        return view

    # --- resources (the listings come from add_common_routes)

    @app.route("/<version>/self", methods=["GET"], strict_slashes=False)
    def node_self(self, request: IRequest, version: str) -> bytes:
        self._version(version)
        view = self._shown("node", self.model.node_id, version)
        return json_response(request, 200, Encoded(view.json))

    @app.route("/<version>/<collection>", methods=["GET"], strict_slashes=False)
    def collection(self, request: IRequest, version: str, collection: str) -> bytes:
        self._version(version)
        kind = self._kind(collection)
        return json_response(request, 200, json_list(view.json for view in self.model.views(kind, version)))

    @app.route("/<version>/<collection>/<rid>", methods=["GET"], strict_slashes=False)
    def resource(self, request: IRequest, version: str, collection: str, rid: str) -> bytes:
        self._version(version)
        view = self._shown(self._kind(collection), rid, version)
        return json_response(request, 200, Encoded(view.json))

    # --- basic connection management (IS-04 "Behaviour - Nodes", Modifying Receiver Subscriptions)

    @app.route("/<version>/receivers/<rid>/target", methods=["PUT"], strict_slashes=False)
    def put_target(self, request: IRequest, version: str, rid: str) -> bytes:
        self._version(version)
        self._shown("receiver", rid, version)
        body = read_json(request)
        # NodeAPI.raml: the body is a ReceiverTarget (a Sender of this version, or {}); 400 otherwise.
        self.schemas.check(version, "nodeapi-receiver-target", body)
        try:
            self.targets.check(rid, body)
        except TargetRefused as exc:
            raise NmosError(400, "The Receiver cannot take this Sender", str(exc)) from None
        self.targets.put(rid, body)
        log.info("Receiver {id}: {action} (via the Node API at {version})", id=rid, version=version,
                 action=f"subscribing to Sender {body['id']}" if body else "unsubscribing")
        # "the target resource SHOULD respond with a 202 (Accepted) code on success, and a response body matching
        # the request body"
        return json_response(request, 202, body)


class ManifestAPI:
    """`GET /x-nmos-ref/sdp/{sender_id}.sdp`: the SDP file of each RTP sender the Node makes one for."""

    app = Klein()
    add_error_handlers(app)

    def __init__(self, model: NodeModel) -> None:
        self.model = model

    @app.route("/", methods=["OPTIONS"], strict_slashes=False)
    @app.route("/<path:_rest>", methods=["OPTIONS"], strict_slashes=False)
    def options(self, request: IRequest, _rest: str = "") -> bytes:
        return options_response(self.app, request)

    @app.route("/sdp/<name>", methods=["GET"], strict_slashes=False)  # mounted at /x-nmos-ref (MANIFEST_PATH)
    def manifest(self, request: IRequest, name: str) -> bytes:
        rid = name.removesuffix(".sdp")
        sender = self.model.get("sender", rid)
        stream = self.model.streams.get(rid)
        if not name.endswith(".sdp") or sender is None or stream is None:
            raise NmosError(404, "No such transport file", request.path.decode("utf-8", "replace"))
        if not sender["subscription"]["active"]:
            # IS-04 v1.2+ "Behaviour - Nodes": manifest_href "MAY return an HTTP 404 (Not Found) where the active
            # parameter in the subscription object is present and set to false".
            raise NmosError(404, f"Sender {rid} is not active, so it has no transport file")
        flow = self.model.get("flow", sender["flow_id"])
        source = self.model.get("source", flow["source_id"]) if flow is not None else None
        if flow is None or source is None:
            raise NmosError(404, f"Sender {rid} sends no flow, so it has no transport file")
        text = make_sdp(sender=sender, flow=flow, source=source, node=self.model.node,
                        destination_ip=stream.destination_ip, destination_port=stream.destination_port,
                        source_ip=_source_ip(self.model))
        data = text.encode("utf-8")
        request.setResponseCode(200)
        # IS-04 "APIs": SDP files SHOULD be served as application/sdp (the AMWA tool warns on any parameter).
        request.setHeader(b"content-type", b"application/sdp")
        request.setHeader(b"content-length", b"%d" % len(data))
        set_cors(request)
        return data


def _source_ip(model: NodeModel) -> str:
    """The address streams come from: the first IPv4 address the Node API answers on."""
    for endpoint in model.endpoints:
        if endpoint.host.count(".") == 3 and endpoint.host.replace(".", "").isdigit():
            return endpoint.host
    return "127.0.0.1"

