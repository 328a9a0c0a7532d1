"""SSF: scale and shift deep features (Lian et al., NeurIPS 2022).

A learned per-channel scale (init 1) and shift (init 0) after linear, normalisation and
embedding layers. Not in HF peft, hence written here. Merging folds them into the
preceding layer's weights where it has some (Linear, Conv, affine norms).

After a norm or a transposed convolution the scale and shift are applied *inside* that
layer (as its affine, or folded into its kernel) during training too: a separate
`x·γ + β` would keep one more full-size feature map per site for the backward pass,
which at 64³ made the PETITE mix keep more activations than full fine-tuning (README,
Performance). Same result, same parameters, same state-dict names.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from petite_fl.models.base import SiteKind
from petite_fl.peft.base import Method, add_output_hook, channel_view
from petite_fl.peft.registry import register_method

SCALE, SHIFT, LAYOUT = "ssf_scale", "ssf_shift", "_ssf_layout"


def _scale_shift(module: nn.Module, output: torch.Tensor) -> torch.Tensor:
    layout = getattr(module, LAYOUT)
    scale = channel_view(getattr(module, SCALE), layout, output.dim())
    shift = channel_view(getattr(module, SHIFT), layout, output.dim())
    return output * scale + shift


def _affine(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's own affine (if any) followed by SSF's, as one weight and bias."""
    scale, shift = getattr(module, SCALE), getattr(module, SHIFT)
    weight = scale if module.weight is None else module.weight * scale
    bias = shift if module.bias is None else module.bias * scale + shift
    return weight, bias


def _instance_norm(self: nn.InstanceNorm3d, x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 5:  # unbatched input: the unfused path
        return _scale_shift(self, type(self).forward(self, x))
    weight, bias = _affine(self)
    return F.instance_norm(x, self.running_mean, self.running_var, weight, bias,
                           self.training or not self.track_running_stats,
                           self.momentum if self.momentum is not None else 0.0, self.eps)


def _layer_norm(self: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    weight, bias = _affine(self)
    return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


def _conv_transpose(self: nn.ConvTranspose3d, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
    # The scale goes into the kernel's output channels: autograd then keeps this layer's
    # input (8× fewer voxels than its output) instead of its output.
    if x.dim() != 5 or self.groups != 1 or self.padding_mode != "zeros" or output_size is not None:
        return _scale_shift(self, type(self).forward(self, x, output_size))
    scale, shift = getattr(self, SCALE), getattr(self, SHIFT)
    weight = self.weight * scale.view(1, -1, *([1] * (self.weight.dim() - 2)))
    bias = shift if self.bias is None else self.bias * scale + shift
    return F.conv_transpose3d(x, weight, bias, self.stride, self.padding, self.output_padding, self.groups,
                              self.dilation)


_FUSED = {nn.InstanceNorm3d: _instance_norm, nn.LayerNorm: _layer_norm, nn.ConvTranspose3d: _conv_transpose}


@register_method
class SSF(Method):
    name = "ssf"
    additive = True
    summary = "SSF (scale and shift features)"
    site_kind = SiteKind.LAYER_OUTPUT

    def inject(self, model, part, args) -> None:
        modules = dict(model.named_modules())
        for site in self.sites(model, part):
            target = modules[site.module]
            if hasattr(target, SCALE):
                continue
            target.register_parameter(SCALE, nn.Parameter(torch.ones(site.channels)))
            target.register_parameter(SHIFT, nn.Parameter(torch.zeros(site.channels)))
            setattr(target, LAYOUT, site.layout)
            fused = _FUSED.get(type(target))
            if fused is not None:  # an instance attribute: hooks and deepcopy keep working
                target.forward = types.MethodType(fused, target)
            else:
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
