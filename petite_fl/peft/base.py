"""The contract every PEFT method follows, and the output-hook helpers they share.

Contract: a method names the kind of place it goes (`site_kind`, a `SiteKind`) and asks the
backbone for those places (`sites`), never for itself by name, so backbones know places,
not methods. `inject(model, part, args)` adds the method's parameters to a frozen backbone
(never changing the backbone's own tensors); the caller marks exactly the new
parameters trainable, so the adapter's state dict is just those tensors and loads onto a
fresh copy of the backbone after the same injection. `merge(model)` folds what can be
folded into the backbone's weights for inference.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from petite_fl.errors import ConfigError
from petite_fl.models.base import PART_NAMES, Backbone, PromptSlot, Site, SiteKind


@dataclass(frozen=True)
class NoArgs:
    """Methods without arguments."""


class Method:
    """A PEFT method; subclasses live one per file and register themselves."""

    name: ClassVar[str]
    #: additive methods can be mixed (one on the encoder, another on the decoder)
    additive: ClassVar[bool] = False
    Args: ClassVar[type] = NoArgs
    #: the paper's short description, for listings
    summary: ClassVar[str] = ""
    #: arguments that must be at least 1 (ranks, reduction factors)
    positive_args: ClassVar[tuple[str, ...]] = ()
    #: the kind of backbone place the method goes (None: it finds its own, or goes nowhere)
    site_kind: ClassVar[SiteKind | None] = None

    def parse_args(self, backbone: Backbone, part: str, given: dict[str, Any]) -> Any:
        """Backbone defaults for this part, overridden by `given`; unknown names refused."""
        allowed = [f.name for f in fields(self.Args)]
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            raise ConfigError(
                f"PEFT method '{self.name}': unknown argument(s) {unknown} "
                f"(allowed: {', '.join(allowed) or 'none'})"
            )
        merged = {**backbone.peft_defaults(self.name, part), **given}
        try:
            args = self.Args(**{k: v for k, v in merged.items() if k in allowed})
        except TypeError as exc:
            raise ConfigError(f"PEFT method '{self.name}': {exc}") from None
        for name in self.positive_args:
            if getattr(args, name) < 1:
                raise ConfigError(f"PEFT method '{self.name}': {name} must be at least 1, got {getattr(args, name)}")
        return args

    def sites(self, backbone: Backbone, part: str, **args: Any) -> list[Site] | list[PromptSlot] | list[str]:
        """The backbone's places of this method's kind in `part` (empty: it cannot go there)."""
        if self.site_kind is None:
            return []
        return backbone.peft_sites(self.site_kind, part, **args)

    def parts(self, backbone: Backbone) -> tuple[str, ...]:
        """Parts where the method can go on this backbone."""
        return tuple(p for p in PART_NAMES if self.sites(backbone, p))

    def inject(self, model: Backbone, part: str, args: Any) -> None:
        raise NotImplementedError

    def merge(self, model: nn.Module) -> None:
        """Fold the method into the weights where possible (default: not foldable)."""


def inject_hf_peft(config: Any, model: nn.Module) -> None:
    """Inject an HF peft tuner into a plain nn.Module (no PeftModel wrapper).

    peft warns "already found a peft_config" on every call after the first; petite-fl
    injects per part and per method on purpose, so that warning is silenced here.
    """
    from peft import inject_adapter_in_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        inject_adapter_in_model(config, model, adapter_name="default")


def channel_view(t: torch.Tensor, layout: str, ndim: int) -> torch.Tensor:
    """Reshape a per-channel vector to broadcast over an output of `ndim` dimensions."""
    if layout == "tokens":
        return t
    return t.view(1, -1, *([1] * (ndim - 2)))


def layout_of(module: nn.Module) -> str:
    """Where a module's output keeps its channels: last axis (tokens) or axis 1."""
    if isinstance(module, (nn.Linear, nn.LayerNorm)):
        return "tokens"
    return "channels"


def add_output_hook(module: nn.Module, fn) -> None:
    """Register `fn(module, output) -> output` after the module's forward."""
    module.register_forward_hook(lambda mod, _inputs, output: fn(mod, output))
