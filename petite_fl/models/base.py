"""The contract between a backbone and the PEFT methods.

A backbone is a 3D image-to-image network (B, 1, D, H, W) → (B, 1, D, H, W) that says
which of its modules form the **encoder** and the **decoder**, and, for each PEFT method,
where in a part that method goes (`peft_sites`). PEFT methods are written once against
this contract; the placement rules of DESIGN.md §1 live in each backbone's file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

PART_NAMES = ("encoder", "decoder")
Layout = Literal["tokens", "channels"]


@dataclass(frozen=True)
class Site:
    """A module whose output a PEFT method reads or changes.

    `channels` is the size of the feature axis of the module's output: the last axis for
    `tokens` layout (B, N, C), axis 1 for `channels` layout (B, C, D, H, W).
    """

    module: str
    channels: int
    layout: Layout


@dataclass(frozen=True)
class PromptSlot:
    """A module that accepts learned prompt tokens (VPT) as a `vpt_prompts` parameter.

    The backbone's forward reads `getattr(module, "vpt_prompts", None)`, a (tokens, dim)
    parameter, and uses it as the VPT paper does for that architecture.
    """

    module: str
    dim: int
    tokens: int  # default number of prompt tokens for this slot (0 = none)


class Backbone(nn.Module):
    """Base class of every registered backbone."""

    #: registry name, e.g. "unetr"
    name: ClassVar[str] = ""
    #: spatial sizes of inputs must be multiples of this
    size_multiple: ClassVar[int] = 16
    #: where a method goes when used alone, if not on every part that takes it
    single_method_parts: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(config)

    def part_modules(self) -> dict[str, list[str]]:
        """Top-level module names of each part: {"encoder": [...], "decoder": [...]}.

        Every parameter of the backbone must belong to exactly one part.
        """
        raise NotImplementedError

    def peft_sites(
        self, method: str, part: str, **args: Any
    ) -> list[Site] | list[PromptSlot] | list[str]:
        """Where `method` goes in `part`; an empty list means it cannot go there.

        `args` are the method's arguments (e.g. VPT's `tokens`, `deep`), for backbones
        whose placement depends on them.

        - "lora": names of nn.Linear / nn.Conv3d modules (list[str]);
        - "adapter": sites after whose output a bottleneck adapter is added (list[Site]);
        - "ssf": sites after whose output a per-channel scale and shift apply (list[Site]);
        - "vpt": prompt slots (list[PromptSlot]);
        - "layernorm": names of normalisation modules with affine parameters (list[str]).
        """
        raise NotImplementedError

    def peft_defaults(self, method: str, part: str) -> dict[str, Any]:
        """The paper's default arguments of `method` on `part` (e.g. LoRA rank)."""
        return {}

    def part_of(self, parameter_name: str) -> str:
        """Which part a (backbone or PEFT) parameter name belongs to."""
        for part, prefixes in self.part_modules().items():
            if any(parameter_name == p or parameter_name.startswith(p + ".") for p in prefixes):
                return part
        raise KeyError(f"parameter '{parameter_name}' belongs to no part of {self.name}")

    def transformer_blocks(self) -> list[nn.Module]:
        """The transformer blocks whose outputs an ablation zeroes (`models.ablation`)."""
        raise NotImplementedError

    def example_input(self, batch: int = 1, size: tuple[int, int, int] | None = None) -> torch.Tensor:
        """A random input of a valid size (tests, parameter counting)."""
        size = size or (self.size_multiple * 2,) * 3
        return torch.rand(batch, 1, *size)
