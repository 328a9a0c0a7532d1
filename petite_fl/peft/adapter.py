"""Bottleneck adapters (Houlsby et al., ICML 2019) after the MLP of each transformer block.

d → d/rf → d with GELU and a zero-initialised up-projection (so injection does not change
the output), added residually. On a CNN decoder (UNETR) the same bottleneck is made of
1×1×1 convolutions after each decoder block. Not in HF peft, hence written here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from petite_fl.models.base import SiteKind
from petite_fl.peft.base import Method, add_output_hook
from petite_fl.peft.registry import register_method

MODULE = "petite_adapter"


@dataclass(frozen=True)
class AdapterArgs:
    reduction: int = 8


class Bottleneck(nn.Module):
    def __init__(self, channels: int, reduction: int, layout: str) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        if layout == "tokens":
            self.down, self.up = nn.Linear(channels, hidden), nn.Linear(hidden, channels)
        else:
            self.down, self.up = nn.Conv3d(channels, hidden, 1), nn.Conv3d(hidden, channels, 1)
        self.act = nn.GELU()
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


@register_method
class Adapters(Method):
    name = "adapter"
    additive = True
    Args = AdapterArgs
    summary = "bottleneck adapters"
    site_kind = SiteKind.BLOCK_OUTPUT
    positive_args = ("reduction",)

    def inject(self, model, part, args: AdapterArgs) -> None:
        modules = dict(model.named_modules())
        for site in self.sites(model, part):
            target = modules[site.module]
            target.add_module(MODULE, Bottleneck(site.channels, int(args.reduction), site.layout))
            add_output_hook(target, lambda mod, out: getattr(mod, MODULE)(out))
