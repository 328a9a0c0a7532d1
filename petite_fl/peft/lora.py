"""LoRA: low-rank updates W + (alpha/r)·B·A (Hu et al., ICLR 2022), through HF peft.

HF peft handles nn.Linear and nn.Conv3d, 3×3×3 kernels included (A is a 3×3×3 conv to r
channels, B a 1×1×1 conv back), which the LoRA library of the original PETITE code got
wrong. B starts at zero, so injection does not change the output.

`ffa=true` is FFA-LoRA (Sun et al., ICLR 2024): A stays frozen at a random init that
every party derives from `ffa_seed` and the layer's name, so only B is trained, stored
and sent (about half of LoRA's bytes), and averaging B across sites is exactly averaging
their updates B·A. A is not in the adapter file: applying the same spec rebuilds it.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import Conv3d as LoraConv3d

from petite_fl.models.base import SiteKind
from petite_fl.peft.base import Method, inject_hf_peft
from petite_fl.peft.registry import register_method


@dataclass(frozen=True)
class LoraArgs:
    r: int = 4
    alpha: float = 8.0
    dropout: float = 0.0
    ffa: bool = False  # FFA-LoRA: A frozen at a shared seeded init, only B trained
    ffa_seed: int = 0


@register_method
class LoRA(Method):
    name = "lora"
    additive = True
    Args = LoraArgs
    summary = "LoRA (HF peft; Linear and Conv3d)"
    site_kind = SiteKind.LINEAR
    positive_args = ("r",)

    def inject(self, model, part, args: LoraArgs) -> None:
        targets = self.sites(model, part)
        if not targets:
            return
        config = LoraConfig(r=int(args.r), lora_alpha=float(args.alpha), lora_dropout=float(args.dropout),
                            target_modules=targets, bias="none")
        inject_hf_peft(config, model)
        if args.ffa:
            freeze_shared_a(model, int(args.ffa_seed))

    def merge(self, model) -> None:
        for module in model.modules():
            if not isinstance(module, LoraLayer) or module.merged:
                continue
            if isinstance(module, LoraConv3d) and tuple(module.base_layer.kernel_size) == (1, 1, 1):
                _merge_pointwise_conv3d(module)
            else:
                module.merge()


def _merge_pointwise_conv3d(layer: LoraConv3d) -> None:
    """peft 0.21's merge of a 1×1×1 Conv3d squeezes only two of three kernel axes and fails;
    for a pointwise kernel the update is simply (B @ A) · scaling."""
    weight = layer.base_layer.weight
    for name in layer.active_adapters:
        a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
        weight.data += (b.flatten(1) @ a.flatten(1)).view_as(weight) * layer.scaling[name]
        layer.merged_adapters.append(name)


def freeze_shared_a(model, seed: int) -> None:
    """FFA-LoRA: draw every A from (seed, layer name), as peft's default init does, and freeze it.

    Seeded per layer rather than from the global RNG so that the server, every site and a
    later inference all rebuild the same A whatever else they drew before.
    """
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter, layer in module.lora_A.items():
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(f"{name}/{adapter}".encode()))
            weight = layer.weight
            fan_in = weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=√5), peft's and nn.Linear's default
            with torch.no_grad():
                weight.copy_(torch.empty(weight.shape).uniform_(-bound, bound, generator=gen))
            weight.requires_grad_(False)
            weight.petite_frozen = True  # apply_peft keeps it out of the trainable set
