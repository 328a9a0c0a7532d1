"""The contract between a backbone and the PEFT methods.

A backbone is a 3D image-to-image network (B, 1, D, H, W) → (B, 1, D, H, W) that says
which of its modules form the **encoder** and the **decoder**, and, for each kind of place
a PEFT method can use (`SiteKind`), where those places are in a part (`peft_sites`). A PEFT
method declares the kind it needs and is written once against this contract, so a new
method needs no backbone edit; the placement rules of the PETITE paper (Kim, Choi, Hwang,
MICCAI 2024) live in each backbone's file.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Literal

import torch
from torch import nn

PART_NAMES = ("encoder", "decoder")
Layout = Literal["tokens", "channels"]


class SiteKind(StrEnum):
    """Kinds of places in a backbone; each PEFT method asks for one (`Method.site_kind`)."""

    #: linear layers (nn.Linear, nn.Conv3d) chosen for an additive (low-rank) weight update → list[str]
    LINEAR = "linear"
    #: the output of each block (transformer MLP, CNN decoder block), where a residual
    #: module is added → list[Site]
    BLOCK_OUTPUT = "block_output"
    #: outputs of linear, normalisation and embedding layers whose per-channel scale and
    #: shift no later layer undoes (not the keys, not a conv an instance norm follows) → list[Site]
    LAYER_OUTPUT = "layer_output"
    #: normalisation modules with affine parameters → list[str]
    NORM = "norm"
    #: modules that read learned prompt tokens → list[PromptSlot]
    PROMPT = "prompt"


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
    #: where a PEFT method (by name) goes when used alone, if not on every part that takes it
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
        self, kind: SiteKind, part: str, **args: Any
    ) -> list[Site] | list[PromptSlot] | list[str]:
        """The places of `kind` in `part` (types in `SiteKind`); empty when the part has none.

        `args` are the asking method's arguments (e.g. VPT's `tokens`, `deep`), for
        backbones whose places depend on them. A string that is no `SiteKind` is refused.
        """
        raise NotImplementedError

    def peft_defaults(self, method: str, part: str) -> dict[str, Any]:
        """The paper's default arguments of PEFT method `method` on `part` (e.g. LoRA rank)."""
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
