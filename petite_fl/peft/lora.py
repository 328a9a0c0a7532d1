"""LoRA: low-rank updates W + (alpha/r)·B·A (Hu et al., ICLR 2022), through HF peft.

HF peft handles nn.Linear and nn.Conv3d, 3×3×3 kernels included (A is a 3×3×3 conv to r
channels, B a 1×1×1 conv back), which the LoRA library of the original PETITE code got
wrong. B starts at zero, so injection does not change the output.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import Conv3d as LoraConv3d

from petite_fl.peft.base import Method, inject_hf_peft
from petite_fl.peft.registry import register_method


@dataclass(frozen=True)
class LoraArgs:
    r: int = 4
    alpha: float = 8.0
    dropout: float = 0.0


@register_method
class LoRA(Method):
    name = "lora"
    additive = True
    Args = LoraArgs
    summary = "LoRA (HF peft; Linear and Conv3d)"
    positive_args = ("r",)

    def inject(self, model, part, args: LoraArgs) -> None:
        targets = model.peft_sites(self.name, part)
        if not targets:
            return
        config = LoraConfig(r=int(args.r), lora_alpha=float(args.alpha), lora_dropout=float(args.dropout),
                            target_modules=targets, bias="none")
        inject_hf_peft(config, model)

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
