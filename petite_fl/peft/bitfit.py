"""BitFit: train the biases (Ben Zaken et al., ACL 2022).

Kept as a zero-initialised delta per biased layer instead of un-freezing the bias itself,
so the backbone's tensors stay bit-identical and shareable and the adapter holds just
the deltas; merging adds them to the biases.
"""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from petite_fl.peft.base import Method, add_output_hook, channel_view, layout_of
from petite_fl.peft.registry import register_method

PARAM = "bitfit_delta"


def _add_delta(module: nn.Module, output: torch.Tensor) -> torch.Tensor:
    delta = getattr(module, PARAM)
    return output + channel_view(delta, layout_of(module), output.dim())


@register_method
class BitFit(Method):
    name = "bitfit"
    summary = "BitFit (all biases)"

    def parts(self, backbone) -> tuple[str, ...]:
        return ("encoder", "decoder")

    def inject(self, model, part, args, backbone_params: set[int] | None = None) -> None:
        """Add a delta to every backbone bias of `part` (not to other methods' layers)."""
        prefixes = model.part_modules()[part]
        for name, module in model.named_modules():
            bias = getattr(module, "bias", None)
            if not isinstance(bias, nn.Parameter) or hasattr(module, PARAM):
                continue
            if isinstance(module, BaseTunerLayer):  # peft wrappers expose their base layer's bias
                continue
            if backbone_params is not None and id(bias) not in backbone_params:
                continue
            if not any(name == p or name.startswith(p + ".") for p in prefixes):
                continue
            module.register_parameter(PARAM, nn.Parameter(torch.zeros_like(bias)))
            add_output_hook(module, _add_delta)

    def merge(self, model) -> None:
        for module in model.modules():
            delta = getattr(module, PARAM, None)
            if _after_an_unfolded_hook(module):
                continue  # e.g. SSF on an affine InstanceNorm: the delta must stay after it
            if isinstance(delta, nn.Parameter) and delta.abs().sum() > 0:
                with torch.no_grad():
                    module.bias.add_(delta)
                    delta.zero_()


def _after_an_unfolded_hook(module: nn.Module) -> bool:
    """True when an output hook registered before ours (SSF) still acts on the output."""
    scale, shift = getattr(module, "ssf_scale", None), getattr(module, "ssf_shift", None)
    if scale is None:
        return False
    return bool((scale != 1).any() or (shift != 0).any())
