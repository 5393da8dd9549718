"""Basic (legacy) connection management: `PUT /receivers/{id}/target` of the Node API.

IS-04 "Behaviour - Nodes", Modifying Receiver Subscriptions: a full Sender subscribes the Receiver, `{}` unsubscribes
it; the API answers 202 at once, and the Receiver's `subscription.sender_id` is set "once a Receiver has successfully
requested, parsed and actioned a change based on the Sender's transport file (SDP in the case of RTP)". From v1.2
`subscription.active` goes with it (IS-04 "Behaviour - Nodes", Receivers: `sender_id` is null unless `active`).
Deprecated since v1.2; nmos-ref still does it at v1.3, where a Node MAY answer 501 instead.

This virtual Receiver "actions" a transport file by checking that it can take the stream: the file must be a valid
SDP whose media type matches the Receiver's `format` and `caps.media_types`. Constraint sets (BCP-004-01) are
advertised for controllers, not evaluated here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nmos_ref.node.sdp import SdpError, format_of, parse_sdp
from nmos_ref.node.state import NodeModel
from nmos_ref.web.client import Unreachable, exchange

log = Logger()

RTP = "urn:x-nmos:transport:rtp"
MAX_SDP = 64 * 1024  # bytes; an SDP file is well under 1 KB


class TargetRefused(ValueError):
    """A target the Receiver cannot take at all (checked before answering 202)."""


def transport_family(urn: str) -> str:
    """IS-04 transport URNs with a subclassification (`rtp.mcast`) belong to their base (`rtp`)."""
    return urn.split(".", 1)[0] if urn.startswith("urn:x-nmos:transport:") else urn


class ReceiverTargets:
    """Subscribes the Node's Receivers to Senders. One request per Receiver counts: a newer PUT overrides an
    older one whose transport file is still being fetched."""

    def __init__(self, model: NodeModel, http: Any, clock: IReactorTime, timeout: float = 4.0) -> None:
        self.model = model
        self.http = http
        self.clock = clock
        self.timeout = timeout
        self._generation: dict[str, int] = {}
        self._requests: set[Deferred[Any]] = set()  # transport files being fetched

    def check(self, receiver_id: str, target: Mapping[str, Any]) -> None:
        """TargetRefused if the Receiver cannot take this Sender whatever its transport file says."""
        receiver = self.model.get("receiver", receiver_id)
        assert receiver is not None
        if target and transport_family(target["transport"]) != transport_family(receiver["transport"]):
            raise TargetRefused(f"the Sender's transport {target['transport']} is not the Receiver's "
                                f"{receiver['transport']}")

    def put(self, receiver_id: str, target: Mapping[str, Any]) -> Deferred[None]:
        """Start subscribing (or unsubscribing, for `{}`); the Deferred fires once the Receiver has acted."""
        generation = self._generation[receiver_id] = self._generation.get(receiver_id, 0) + 1
        return ensureDeferred(self._act(receiver_id, dict(target), generation))

    def stop(self) -> None:
        """Cancel the transport files still being fetched (on shutdown)."""
        for request in list(self._requests):
            request.cancel()

    async def _act(self, receiver_id: str, target: dict[str, Any], generation: int) -> None:
        try:
            if not target:
                self._subscribe(receiver_id, None, generation)
                return
            receiver = self.model.get("receiver", receiver_id)
            if receiver is None:
                return
            href = target.get("manifest_href")
            if transport_family(receiver["transport"]) == RTP:
                if not href:
                    log.warn("Receiver {id}: Sender {sender} has no manifest_href, so there is no SDP file to act "
                             "on; the subscription is unchanged", id=receiver_id, sender=target["id"])
                    return
                text = await self._fetch(href)
                media = parse_sdp(text)
                self._check_media(receiver, [medium.media_type for medium in media])
            self._subscribe(receiver_id, target["id"], generation)
        except (SdpError, TargetRefused) as exc:
            log.warn("Receiver {id} cannot take Sender {sender}: {reason}; the subscription is unchanged",
                     id=receiver_id, sender=target.get("id"), reason=str(exc))
        except Unreachable as exc:
            log.warn("Receiver {id} could not get the transport file of Sender {sender}: {reason}; the "
                     "subscription is unchanged", id=receiver_id, sender=target.get("id"), reason=str(exc))
        except Exception:
            log.failure("Receiver {id} failed to act on Sender {sender}", id=receiver_id, sender=target.get("id"))

    async def _fetch(self, href: str) -> str:
        request = exchange(self.http, self.clock, "GET", href, timeout=self.timeout,
                           accept="application/sdp, */*;q=0.5")
        self._requests.add(request)
        try:
            reply = await request
        finally:
            self._requests.discard(request)
        if reply.code != 200:
            raise SdpError(f"GET {href} answered {reply.code}")
        if len(reply.body) > MAX_SDP:
            raise SdpError(f"the transport file is larger than {MAX_SDP} bytes")
        try:
            return reply.body.decode("utf-8")
        except UnicodeDecodeError:
            raise SdpError("the transport file is not UTF-8 text") from None

    @staticmethod
    def _check_media(receiver: Mapping[str, Any], media_types: list[str | None]) -> None:
        accepted = receiver.get("caps", {}).get("media_types")
        for media_type in media_types:
            if media_type is None:
                if accepted is not None:
                    raise TargetRefused("the SDP file does not say its media type (no a=rtpmap)")
                continue
            if format_of(media_type) != receiver["format"]:
                raise TargetRefused(f"{media_type} is not {receiver['format']}")
            if accepted is not None and media_type not in accepted:
                raise TargetRefused(f"{media_type} is not one of the Receiver's media types ({', '.join(accepted)})")

    def _subscribe(self, receiver_id: str, sender_id: str | None, generation: int) -> None:
        if self._generation.get(receiver_id) != generation or self.model.get("receiver", receiver_id) is None:
            return  # a newer request for this Receiver came in meanwhile
        subscription = {"sender_id": sender_id, "active": sender_id is not None}
        if self.model.get("receiver", receiver_id)["subscription"] == subscription:
            return
        self.model.update("receiver", receiver_id, subscription=subscription)
        if sender_id is None:
            log.info("Receiver {id} unsubscribed", id=receiver_id)
        else:
            log.info("Receiver {id} subscribed to Sender {sender}", id=receiver_id, sender=sender_id)
