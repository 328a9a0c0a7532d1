"""A site checks an offered backbone's size against its policy from the tensors' headers, before
Flower's decoder allocates what a header claims: a 100-byte tensor whose header declares 200 M
parameters is refused in one line, and never decoded."""

from __future__ import annotations

import io

import numpy as np
import torch
from flower_grid import outside_a_run
from flwr.app import Array, Context, Message, RecordDict

from petite_fl.federation.flower.client import handle
from petite_fl.federation.flower.codec import encode
from petite_fl.federation.messages import BackboneOffer

CLAIMED = 200_000_000  # over the default policy.max_backbone_parameters (150 M); 800 MB as float32


def offer(shape: tuple[int, ...], record_shape: tuple[int, ...] | None = None) -> Message:
    """A real backbone offer whose one tensor's npy header declares `shape` over 16 bytes of data."""
    outside_a_run()
    content = encode(BackboneOffer("r1", {"w": torch.zeros(4)}, {"model": "unet", "config": {}, "sha256": "0" * 64}))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    content.array_records["arrays"]["w"] = Array(dtype="float32", shape=record_shape or shape, stype="numpy.ndarray",
                                                 data=header.getvalue() + bytes(16))
    return Message(content, dst_node_id=0, message_type="query.backbone")


def answer(message: Message) -> Message:
    context = Context(run_id=1, node_id=0, node_config={"site": "scanner4"}, state=RecordDict(), run_config={})
    return handle(message, context)


def test_an_offered_backbone_too_large_by_its_headers_is_refused_before_decoding(capsys):
    reply = answer(offer((CLAIMED,)))
    assert reply.has_error()
    line = capsys.readouterr().err.strip()
    assert line == ("site scanner4: refused by policy.max_backbone_parameters (150000000): the offered backbone's "
                    f"headers declare {CLAIMED} parameters")


def test_a_tensor_whose_header_and_record_disagree_is_unreadable(capsys):
    reply = answer(offer((CLAIMED,), record_shape=(4,)))
    assert reply.has_error()
    assert "tensor 'w' declares shape (200000000,) in its header and (4,) in its record" in capsys.readouterr().err
