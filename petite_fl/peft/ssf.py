"""SSF: scale and shift deep features (Lian et al., NeurIPS 2022).

A learned per-channel scale (init 1) and shift (init 0) after linear, normalisation and
embedding layers. Not in HF peft, hence written here. Merging folds them into the
preceding layer's weights where it has some (Linear, Conv, affine norms).
"""

from __future__ import annotations

import torch
from torch import nn

from petite_fl.peft.base import Method, add_output_hook, channel_view
from petite_fl.peft.registry import register_method

SCALE, SHIFT, LAYOUT = "ssf_scale", "ssf_shift", "_ssf_layout"


def _scale_shift(module: nn.Module, output: torch.Tensor) -> torch.Tensor:
    layout = getattr(module, LAYOUT)
    scale = channel_view(getattr(module, SCALE), layout, output.dim())
    shift = channel_view(getattr(module, SHIFT), layout, output.dim())
    return output * scale + shift


@register_method
class SSF(Method):
    name = "ssf"
    additive = True
    summary = "SSF (scale and shift features)"

    def inject(self, model, part, args) -> None:
        modules = dict(model.named_modules())
        for site in model.peft_sites(self.name, part):
            target = modules[site.module]
            if hasattr(target, SCALE):
                continue
            target.register_parameter(SCALE, nn.Parameter(torch.ones(site.channels)))
            target.register_parameter(SHIFT, nn.Parameter(torch.zeros(site.channels)))
            setattr(target, LAYOUT, site.layout)
            add_output_hook(target, _scale_shift)

    def merge(self, model) -> None:
        for module in model.modules():
            if not hasattr(module, SCALE) or not _foldable(module):
                continue
            scale, shift = getattr(module, SCALE), getattr(module, SHIFT)
            with torch.no_grad():
                weight = module.weight
                if isinstance(module, nn.ConvTranspose3d):
                    weight.mul_(scale.view(1, -1, *([1] * (weight.dim() - 2))))
                else:
                    weight.mul_(scale.view(-1, *([1] * (weight.dim() - 1))))
                if module.bias is None:
                    module.bias = nn.Parameter(torch.zeros_like(shift), requires_grad=False)
                module.bias.mul_(scale).add_(shift)
                scale.fill_(1.0)
                shift.zero_()


def _foldable(module: nn.Module) -> bool:
    """Layers with weights to fold into. Call before BitFit's merge (its delta comes after)."""
    if getattr(module, "weight", None) is None:
        return False
    return isinstance(module, (nn.Linear, nn.Conv3d, nn.ConvTranspose3d, nn.LayerNorm))
