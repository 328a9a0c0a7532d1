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


#: kinds of merge slot a standalone (merged) backbone file may name (`add_merge_slots`)
MERGE_SLOTS = ("bias", "affine")


def add_merge_slots(model: nn.Module, slots: dict[str, list[str]] | None) -> None:
    """Give named modules the parameters a merged model needs and the plain architecture lacks.

    A merged export (`petite adapters export --merged`) folds a fine-tuning into the weights.
    Two foldings need a parameter the plain network does not have: a shift folded into a layer
    built without a bias (`bias`: a zero bias is added), and a per-channel scale and shift after
    a norm without affine parameters (`affine`: the norm becomes affine, weight 1 and bias 0;
    `norm(x)·s + b` is exactly an affine norm with weight s and bias b). The file's tensors then
    fill them; their names are in the backbone's SHA-256, so the slots are covered by it.
    Generic model code, no PEFT: a merged file loads with `load_backbone` alone.
    """
    if not slots:
        return
    unknown = sorted(set(slots) - set(MERGE_SLOTS))
    if unknown:
        raise ValueError(f"unknown merge slot kind(s) {unknown} (known: {', '.join(MERGE_SLOTS)})")
    modules = dict(model.named_modules())
    for kind in MERGE_SLOTS:
        for name in slots.get(kind, []):
            if name not in modules:
                raise ValueError(f"merge slot '{kind}': the network has no module '{name}'")
            module = modules[name]
            ref = module.weight if getattr(module, "weight", None) is not None else None
            if kind == "bias":
                if ref is None or getattr(module, "bias", None) is not None:
                    raise ValueError(f"merge slot 'bias': module '{name}' has no weight or already a bias")
                out = getattr(module, "out_channels", None) or getattr(module, "out_features", None)
                module.bias = nn.Parameter(torch.zeros(int(out), dtype=ref.dtype))
            else:
                if ref is not None:
                    raise ValueError(f"merge slot 'affine': module '{name}' already has affine parameters")
                shape = _norm_shape(module)
                if shape is None:
                    raise ValueError(f"merge slot 'affine': module '{name}' ({type(module).__name__}) is no norm")
                module.weight = nn.Parameter(torch.ones(shape))
                module.bias = nn.Parameter(torch.zeros(shape))
                for flag in ("affine", "elementwise_affine"):
                    if hasattr(module, flag):
                        setattr(module, flag, True)
    model.merge_slots = {k: sorted(slots.get(k, [])) for k in MERGE_SLOTS if slots.get(k)}


def _norm_shape(module: nn.Module) -> tuple[int, ...] | None:
    if isinstance(module, nn.LayerNorm):
        return tuple(module.normalized_shape)
    if isinstance(module, nn.GroupNorm):
        return (module.num_channels,)
    if isinstance(module, nn.modules.batchnorm._NormBase):  # BatchNorm*, InstanceNorm*
        return (module.num_features,)
    return None
