"""Visual prompt tuning (Jia et al., ECCV 2022): learned tokens in the transformer sequence.

The backbone declares its prompt slots (UNETR: tokens prepended to the ViT sequence; CVT:
extra key/value tokens per stage); this method gives each slot a `vpt_prompts` parameter
that the backbone's forward reads. Not in HF peft for these networks, hence written here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from petite_fl.errors import ConfigError
from petite_fl.models.base import SiteKind
from petite_fl.peft.base import Method
from petite_fl.peft.registry import register_method

PARAM = "vpt_prompts"


@dataclass(frozen=True)
class VptArgs:
    tokens: int | list[int] | None = None  # per backbone: an int (UNETR) or per stage (CVT)
    deep: bool = False  # UNETR: new prompts at every layer instead of the first only


@register_method
class VPT(Method):
    name = "vpt"
    additive = True
    Args = VptArgs
    summary = "visual prompt tuning"
    site_kind = SiteKind.PROMPT

    def inject(self, model, part, args: VptArgs) -> None:
        kwargs = {"deep": args.deep} | ({} if args.tokens is None else {"tokens": args.tokens})
        try:
            slots = self.sites(model, part, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"PEFT method 'vpt' on {model.name} {part}: {exc}") from None
        modules = dict(model.named_modules())
        generator = torch.Generator().manual_seed(0)  # same init on every site and reload
        for slot in slots:
            if slot.tokens < 0:
                raise ConfigError(f"PEFT method 'vpt': negative token count {slot.tokens}")
            if slot.tokens == 0:
                continue
            init = torch.randn(slot.tokens, slot.dim, generator=generator) * 0.02
            setattr(modules[slot.module], PARAM, nn.Parameter(init.to(_device_of(model))))


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
