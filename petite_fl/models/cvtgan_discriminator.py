"""The conditional 3D PatchGAN discriminator of CVT-GAN (Zeng et al., MICCAI 2022).

Not a Backbone: PEFT never touches it; it stays at the site that trains with it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from petite_fl.errors import ConfigError
from petite_fl.models.cvt_blocks import ACT_SLOPE


class CvTGANDiscriminator(nn.Module):
    """Conditional 3D PatchGAN: (input, real-or-generated output) → a map of patch logits.

    Three stride-2 4³ convs (width, 2·width, 4·width) and a 3³ conv to one channel: a 32³ pair
    gives a 4³ logit map. InstanceNorm, not BatchNorm, for the same small-batch reasons as above.
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.width = width
        w = width
        self.net = nn.Sequential(
            nn.Conv3d(2, w, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(ACT_SLOPE),
            nn.Conv3d(w, 2 * w, kernel_size=4, stride=2, padding=1, bias=False),
            nn.InstanceNorm3d(2 * w, affine=True), nn.LeakyReLU(ACT_SLOPE),
            nn.Conv3d(2 * w, 4 * w, kernel_size=4, stride=2, padding=1, bias=False),
            nn.InstanceNorm3d(4 * w, affine=True), nn.LeakyReLU(ACT_SLOPE),
            nn.Conv3d(4 * w, 1, kernel_size=3, padding=1),
        )

    def forward(self, inputs: torch.Tensor, outputs: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for `cat(inputs, outputs)`; pass one 2-channel tensor as `inputs` to skip the concat."""
        x = inputs if outputs is None else torch.cat([inputs, outputs], dim=1)
        return self.net(x)


DISCRIMINATOR_PRESETS: dict[str, dict[str, Any]] = {"paper": {"width": 64}, "tiny": {"width": 8}}


def build_discriminator(preset: str) -> CvTGANDiscriminator:
    """The discriminator that goes with the generator preset of the same name."""
    if preset not in DISCRIMINATOR_PRESETS:
        raise ConfigError(f"no discriminator preset '{preset}' (known: {', '.join(sorted(DISCRIMINATOR_PRESETS))})")
    return CvTGANDiscriminator(**DISCRIMINATOR_PRESETS[preset])
