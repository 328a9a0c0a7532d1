"""The ClientApp's one handler: a Flower message in, the site's typed answer out.

The site's run settings are remembered in the node's Flower state (`Context.state`,
kept by the SuperNode across the messages of a run) by `site.endpoint.SiteEndpoint`. A refusal
is one line in the site's own log and the error reply the coordinator gets.
"""

from __future__ import annotations

import sys

from flwr.app import ConfigRecord, Context, Error, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from petite_fl.errors import PetiteError
from petite_fl.federation.flower.codec import declared_tensors, decode, encode
from petite_fl.federation.messages import BY_KIND, BackboneOffer, TrainIns
from petite_fl.federation.site.endpoint import SiteEndpoint, for_coordinator

#: Error code of a site that refused a message for a reason it states (bad data, config).
SITE_REFUSED = 1001
_STATE = "petite-fl.runs"
_FITINS_CONFIG = "fitins.config"  # the legacy FitIns config, which Flower's clipping mod reads


def _carried(message: Message) -> tuple[bool, bool]:
    """(through SecAgg+, through client-side clipping): the train mods (`secagg.TRAIN_MODS`) call this
    handler for a message holding SecAgg+'s configs only from inside the protocol's masking stage,
    and clip whenever the FitIns config holds a clipping norm."""
    records = message.content.config_records
    fitins = records.get(_FITINS_CONFIG)
    return RECORD_KEY_CONFIGS in records, fitins is not None and KEY_CLIPPING_NORM in fitins


def handle(message: Message, context: Context) -> Message:
    """Answer one message of the server; a site's own refusal travels as a clear error reply."""
    endpoint = SiteEndpoint(dict(context.node_config), {})
    try:
        kind = BY_KIND.get(message.metadata.message_type)
        if kind is None:
            raise PetiteError(f"unknown message type '{message.metadata.message_type}'")
        if kind is BackboneOffer:  # its size against the site's policy before any tensor is decoded
            endpoint.policy.check_backbone(declared_tensors(message.content), "the offered backbone's headers declare")
        ins = decode(kind, message.content)
        if _STATE not in context.state.config_records:
            context.state.config_records[_STATE] = ConfigRecord()
        endpoint.state = context.state.config_records[_STATE]
        reply = endpoint.answer(ins, _carried(message) if isinstance(ins, TrainIns) else None)
        return Message(encode(reply, ins), reply_to=message)
    except PetiteError as exc:
        line = f"site {endpoint.name()}: {exc}"
        print(line, file=sys.stderr, flush=True)  # the site's log: the whole line, paths included
        return message.create_error_reply(Error(SITE_REFUSED, for_coordinator(line)))
