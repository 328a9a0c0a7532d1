"""Transformer ablation: how much of a backbone's output its transformer carries.

Attention-side PEFT (LoRA on query and key, VPT, LayerNorm of the ViT) can only help where
the transformer matters. Zeroing its outputs and measuring the PSNR drop tells whether it
does: in PETITE's UNETR, LoRA alone recovers 0.98 dB, which a transformer worth less
could not give. UNETR: every ViT hidden state the decoder reads is zero; CVT-GAN: the
attention and MLP branches of every CvT block are zero (its encoder has no other path).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from petite_fl.models.base import Backbone


@contextmanager
def transformer_ablated(model: Backbone) -> Iterator[Backbone]:
    """Within the block, every module of `model.transformer_blocks()` outputs zeros."""

    def zero(_module, _inputs, output):
        return torch.zeros_like(output)

    handles = [block.register_forward_hook(zero) for block in model.transformer_blocks()]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
