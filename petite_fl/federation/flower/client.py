"""The ClientApp's one handler: a Flower message in, the site's typed answer out.

The site's run settings are remembered in the node's Flower state (`Context.state`,
kept by the SuperNode across the messages of a run) by `site.endpoint.SiteEndpoint`. Whatever goes
wrong is logged whole at the site; the error reply the coordinator gets is built from a whitelist
(`site.outgoing_errors`), never from the exception's text.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Error, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from petite_fl.console import printable
from petite_fl.errors import PetiteError
from petite_fl.federation.flower.codec import declared_tensors, decode, encode
from petite_fl.federation.messages import BY_KIND, BackboneOffer, TrainIns
from petite_fl.federation.site.endpoint import SiteEndpoint
from petite_fl.federation.site.outgoing_errors import report

#: Error code of a site that refused a message for a reason it states (bad data, config, its policy).
SITE_REFUSED = 1001
#: Error code of a site that failed (any other exception: only its class reaches the coordinator).
SITE_FAILED = 1002
_STATE = "petite-fl.runs"
_FITINS_CONFIG = "fitins.config"  # the legacy FitIns config, which Flower's clipping mod reads


def _carried(message: Message) -> tuple[bool, bool]:
    """(through SecAgg+, through client-side clipping): the train mods (`secagg.TRAIN_MODS`) call this
    handler for a message holding SecAgg+'s configs only from inside the protocol's masking stage,
    and clip whenever the FitIns config holds a clipping norm."""
    records = message.content.config_records
    fitins = records.get(_FITINS_CONFIG)
    return RECORD_KEY_CONFIGS in records, fitins is not None and KEY_CLIPPING_NORM in fitins


def error_reply(message: Message, exc: BaseException, site: str | None) -> Message:
    """The reply to `message` that failed with `exc`: the whole error in the site's log, a whitelisted
    line to the coordinator."""
    code = SITE_REFUSED if isinstance(exc, PetiteError) else SITE_FAILED
    return message.create_error_reply(Error(code, report(exc, site)))


def handle(message: Message, context: Context) -> Message:
    """Answer one message of the server; whatever fails travels as a whitelisted error reply."""
    endpoint = SiteEndpoint(dict(context.node_config), {})
    try:
        kind = BY_KIND.get(message.metadata.message_type)
        if kind is None:
            text = f"unknown message type '{printable(message.metadata.message_type, 60)}'"
            raise PetiteError(text, public=text)
        if kind is BackboneOffer:  # its size against the site's policy before any tensor is decoded
            endpoint.policy.check_backbone(declared_tensors(message.content), "the offered backbone's headers declare")
        ins = decode(kind, message.content)
        if _STATE not in context.state.config_records:
            context.state.config_records[_STATE] = ConfigRecord()
        endpoint.state = context.state.config_records[_STATE]
        reply = endpoint.answer(ins, _carried(message) if isinstance(ins, TrainIns) else None)
        return Message(encode(reply, ins), reply_to=message)
    except Exception as exc:  # nothing of its text may reach Flower's reply
        return error_reply(message, exc, endpoint.name())
