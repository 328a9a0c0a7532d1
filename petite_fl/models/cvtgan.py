"""3D CVT-GAN (Zeng et al., MICCAI 2022): a CvT encoder / transformer up-sampling decoder generator.

The generator maps a low-dose PET volume (B, 1, D, H, W) to a full-dose one; the output is
`input + head(...)` (global residual) so an untrained or zero head is the identity. Written from
the paper's description: conv stem, three CvT stages (128/256/512, depths 1/2/2, heads 2/4/4),
a decoder of CvT blocks with transposed-conv up-sampling and skip fusion. Its blocks are in
`cvt_blocks.py`; its conditional PatchGAN discriminator (not a Backbone: PEFT never touches it)
in `cvtgan_discriminator.py`, as MONAI keeps one network per file and blocks apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from petite_fl.models.base import Backbone, PromptSlot, Site, SiteKind
from petite_fl.models.cvt_blocks import ACT_SLOPE, CvTBlock, DecoderStage, EncoderStage, Head
from petite_fl.models.registry import register_backbone

#: default VPT prompt tokens per stage (paper: encoder "0/8/32", decoder D1/D2 "32/8")
VPT_TOKENS = {"encoder": [0, 8, 32], "decoder": [32, 8]}


_PAPER: dict[str, Any] = {
    "stem_channels": 56,
    "embed_dims": [128, 256, 512],
    "depths": [1, 2, 2],
    "heads": [2, 4, 4],
    "decoder_depths": [2, 1],
    "decoder_heads": [4, 4],
    "mlp_ratio": 4.0,
    "kv_stride": 2,
}
_TINY: dict[str, Any] = {
    **_PAPER,
    "stem_channels": 8,
    "embed_dims": [16, 32, 64],
    "heads": [1, 2, 2],
    "decoder_heads": [2, 2],
}
#: generator presets (constructor arguments); "paper" has 28.68 M parameters, "tiny" 0.49 M
PRESETS: dict[str, dict[str, Any]] = {"paper": _PAPER, "tiny": _TINY}


@register_backbone("cvtgan", presets=PRESETS)
class CvTGAN(Backbone):
    """The CVT-GAN generator. Three encoder stages (strides 4, 2, 2) and two decoder stages.

    Parts: `encoder` = stem + stage embeddings + encoder blocks; `decoder` = decoder stages + head.
    """

    size_multiple = 16

    def __init__(self, stem_channels: int = 56, embed_dims: Sequence[int] = (128, 256, 512),
                 depths: Sequence[int] = (1, 2, 2), heads: Sequence[int] = (2, 4, 4),
                 decoder_depths: Sequence[int] = (2, 1), decoder_heads: Sequence[int] = (4, 4),
                 mlp_ratio: float = 4.0, kv_stride: int = 2) -> None:
        dims, depths, heads = list(embed_dims), list(depths), list(heads)
        decoder_depths, decoder_heads = list(decoder_depths), list(decoder_heads)
        if not (len(dims) == len(depths) == len(heads) == 3 and len(decoder_depths) == len(decoder_heads) == 2):
            raise ValueError("cvtgan needs 3 encoder stages (embed_dims/depths/heads) and 2 decoder stages")
        super().__init__(stem_channels=stem_channels, embed_dims=dims, depths=depths, heads=heads,
                         decoder_depths=decoder_depths, decoder_heads=decoder_heads, mlp_ratio=mlp_ratio,
                         kv_stride=kv_stride)
        # No conv bias: the instance norm right after would remove it (a dead parameter).
        stem = nn.Sequential(nn.Conv3d(1, stem_channels, kernel_size=3, padding=1, bias=False),
                             nn.InstanceNorm3d(stem_channels, affine=True), nn.LeakyReLU(ACT_SLOPE))
        # CvT stage 1 embeds with kernel 7 stride 4, later stages with kernel 3 stride 2
        kernels, strides, ins = (7, 3, 3), (4, 2, 2), [stem_channels, *dims[:-1]]
        self.encoder = nn.ModuleDict({
            "stem": stem,
            "stages": nn.ModuleList(
                EncoderStage(ins[i], dims[i], depths[i], heads[i], kernels[i], strides[i], mlp_ratio, kv_stride)
                for i in range(3)
            ),
        })
        self.decoder = nn.ModuleDict({
            "stages": nn.ModuleList(
                DecoderStage(dims[2 - j], dims[1 - j], decoder_depths[j], decoder_heads[j], mlp_ratio, kv_stride)
                for j in range(2)
            ),
            "head": Head(dims[0], stem_channels, strides[0]),
        })
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """CvT's init for the transformer parts; convolutions keep PyTorch's defaults."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.encoder["stem"](x)
        skips, h = [], stem
        for stage in self.encoder["stages"]:
            h = stage(h)
            skips.append(h)
        for stage, skip in zip(self.decoder["stages"], reversed(skips[:-1]), strict=True):
            h = stage(h, skip)
        return x + self.decoder["head"](h, stem)

    # ---- the Backbone contract -------------------------------------------------------------
    def part_modules(self) -> dict[str, list[str]]:
        return {"encoder": ["encoder"], "decoder": ["decoder"]}

    def _blocks(self, part: str) -> list[tuple[str, CvTBlock, int]]:
        """(qualified name, block, stage index) of every CvT block of `part`, in forward order."""
        if part not in ("encoder", "decoder"):
            raise KeyError(f"unknown part '{part}'")
        return [(f"{part}.stages.{s}.blocks.{b}", block, s)
                for s, stage in enumerate(getattr(self, part)["stages"])
                for b, block in enumerate(stage.blocks)]

    @staticmethod
    def _normalised_convs() -> set[str]:
        """Convs directly followed by an instance norm."""
        return {"encoder.stem.0"}

    def _modules_in(self, part: str) -> Iterator[tuple[str, nn.Module]]:
        """(qualified name, module) of every module of `part`."""
        return getattr(self, part).named_modules(prefix=part)

    def peft_sites(self, kind: SiteKind, part: str, **args: Any) -> list[Site] | list[PromptSlot] | list[str]:
        kind = SiteKind(kind)
        blocks = self._blocks(part)
        if kind is SiteKind.LINEAR:
            return [f"{name}.attn.{p}" for name, _, _ in blocks for p in ("to_q", "to_k", "to_v")]
        if kind is SiteKind.BLOCK_OUTPUT:
            return [Site(f"{name}.mlp", block.dim, "tokens") for name, block, _ in blocks]
        if kind is SiteKind.PROMPT:  # prompt tokens per stage of the part (paper: encoder 0/8/32)
            tokens = args.get("tokens") or VPT_TOKENS[part]
            if isinstance(tokens, int) or len(tokens) != len(VPT_TOKENS[part]):
                raise ValueError(f"tokens must list one count per {part} stage ({len(VPT_TOKENS[part])}), "
                                 f"got {tokens!r}")
            return [PromptSlot(f"{name}.attn", block.dim, tokens[s]) for name, block, s in blocks]
        if kind is SiteKind.NORM:
            return [name for name, m in self._modules_in(part)
                    if isinstance(m, nn.LayerNorm) or (isinstance(m, nn.InstanceNorm3d) and m.affine)]
        if kind is SiteKind.LAYER_OUTPUT:
            # Not on the key path (a shift of every key cancels in the softmax), nor on a
            # conv that an instance norm follows (it removes per-channel scale and shift).
            sites: list[Site] = []
            for name, m in self._modules_in(part):
                if name.endswith((".to_k", ".dw_k.norm")) or name in self._normalised_convs():
                    continue
                if isinstance(m, nn.Linear):
                    sites.append(Site(name, m.out_features, "tokens"))
                elif isinstance(m, nn.LayerNorm):
                    sites.append(Site(name, m.normalized_shape[0], "tokens"))
                elif isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) and m.groups == 1:
                    sites.append(Site(name, m.out_channels, "channels"))
                elif isinstance(m, nn.InstanceNorm3d) and m.affine:
                    sites.append(Site(name, m.num_features, "channels"))
            return sites
        return []

    def transformer_blocks(self) -> list[nn.Module]:
        # Attention and MLP branches of every CvT block: the residual stream keeps the
        # convolutional embeddings, so what is left is the network without its transformer.
        return [m for _, block, _ in (*self._blocks("encoder"), *self._blocks("decoder"))
                for m in (block.attn, block.mlp)]

    def peft_defaults(self, method: str, part: str) -> dict[str, Any]:
        if method == "lora":
            return {"r": 8, "alpha": 16}
        if method == "adapter":
            return {"reduction": 8}
        if method == "vpt":
            return {"tokens": list(VPT_TOKENS[part])}
        return {}
