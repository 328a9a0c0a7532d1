"""3D CVT-GAN (Zeng et al., MICCAI 2022): a CvT encoder / transformer up-sampling decoder generator.

The generator maps a low-dose PET volume (B, 1, D, H, W) to a full-dose one; the output is
`input + head(...)` (global residual) so an untrained or zero head is the identity. Written from
the paper's description: conv stem, three CvT stages (128/256/512, depths 1/2/2, heads 2/4/4),
a decoder of CvT blocks with transposed-conv up-sampling and skip fusion, and a conditional
PatchGAN discriminator (`CvTGANDiscriminator`, not a Backbone: PEFT never touches it).

The attention keeps CvT's convolutional projections (depthwise conv → norm → pointwise Linear),
with the pointwise Linears named `to_q` / `to_k` / `to_v` so LoRA targets them, and reads an
optional `vpt_prompts` (T, C) parameter that adds T prompt keys/values (VPT-deep, efficiently).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from petite_fl.errors import ConfigError
from petite_fl.models.base import Backbone, PromptSlot, Site, SiteKind
from petite_fl.models.registry import register_backbone

#: default VPT prompt tokens per stage (paper: encoder "0/8/32", decoder D1/D2 "32/8")
VPT_TOKENS = {"encoder": [0, 8, 32], "decoder": [32, 8]}
_ACT_SLOPE = 0.2


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W) → (B, D·H·W, C)."""
    return x.flatten(2).transpose(1, 2)


def _to_volume(x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """(B, N, C) → (B, C, D, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)


class ConvProjection(nn.Module):
    """CvT's convolutional projection before the pointwise Linear: depthwise Conv3d + norm.

    The norm is a LayerNorm over channels per voxel, not BatchNorm3d / InstanceNorm3d: both of
    those raise in training on a 1-voxel grid (a valid 16³ input has a 1³ stage-3 grid, and the
    stride-2 keys of a 2³ grid are 1³), BatchNorm also needs batch > 1 there, and its running
    statistics would drift while the backbone is meant to be frozen under PEFT and federated.
    """

    def __init__(self, dim: int, stride: int, norm_bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv3d(dim, dim, kernel_size=3, stride=stride, padding=1, groups=dim, bias=False)
        self.norm = nn.LayerNorm(dim, bias=norm_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Volume (B, C, D, H, W) → tokens (B, N', C); stride 2 gives ceil(n/2) ≥ 1 per axis."""
        return self.norm(_to_tokens(self.conv(x)))


class ConvAttention(nn.Module):
    """Multi-head attention with convolutional q/k/v projections and optional VPT prompts."""

    def __init__(self, dim: int, heads: int, kv_stride: int = 2) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.dw_q = ConvProjection(dim, 1)
        # A constant added to every key cancels in the softmax, so the key path has no final
        # bias (norm or Linear): such parameters could never change the output.
        self.dw_k = ConvProjection(dim, kv_stride, norm_bias=False)
        self.dw_v = ConvProjection(dim, kv_stride)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        # set by the VPT tuner to an nn.Parameter (T, dim); T extra keys/values shared by the batch
        self.vpt_prompts: nn.Parameter | None = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        vol = _to_volume(x, grid)
        q = self.to_q(self.dw_q(vol))
        k = self.to_k(self.dw_k(vol))
        v = self.to_v(self.dw_v(vol))
        prompts = self.vpt_prompts
        if prompts is not None and prompts.shape[0] > 0:
            # VPT-deep: prompts are extra keys/values only; their outputs would be discarded anyway
            k = torch.cat([k, self.to_k(prompts).expand(x.shape[0], -1, -1)], dim=1)
            v = torch.cat([v, self.to_v(prompts).expand(x.shape[0], -1, -1)], dim=1)
        out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        return self.proj(out.transpose(1, 2).reshape(x.shape))


class Mlp(nn.Module):
    """Transformer MLP: Linear → GELU → Linear; its (B, N, C) output is the adapter site."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CvTBlock(nn.Module):
    """Pre-norm CvT block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, kv_stride: int) -> None:
        super().__init__()
        self.dim = dim
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ConvAttention(dim, heads, kv_stride)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), grid)
        return x + self.mlp(self.norm2(x))


def _run_blocks(blocks: nn.ModuleList, vol: torch.Tensor) -> torch.Tensor:
    """Apply CvT blocks to a volume, returning a volume of the same shape."""
    grid = vol.shape[2:]
    x = _to_tokens(vol)
    for block in blocks:
        x = block(x, grid)
    return _to_volume(x, grid)


class EncoderStage(nn.Module):
    """Convolutional token embedding (Conv3d + channel LayerNorm) followed by CvT blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, kernel: int, stride: int,
                 mlp_ratio: float, kv_stride: int) -> None:
        super().__init__()
        self.embed = nn.Conv3d(in_dim, dim, kernel_size=kernel, stride=stride, padding=kernel // 2)
        self.embed_norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(CvTBlock(dim, heads, mlp_ratio, kv_stride) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vol = self.embed(x)
        grid = vol.shape[2:]
        vol = _to_volume(self.embed_norm(_to_tokens(vol)), grid)
        return _run_blocks(self.blocks, vol)


class DecoderStage(nn.Module):
    """CvT blocks at `dim`, ×2 transposed-conv up-sampling to `out_dim`, skip concat and fusion conv."""

    def __init__(self, dim: int, out_dim: int, depth: int, heads: int, mlp_ratio: float, kv_stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(CvTBlock(dim, heads, mlp_ratio, kv_stride) for _ in range(depth))
        self.up = nn.ConvTranspose3d(dim, out_dim, kernel_size=2, stride=2)
        self.fuse = nn.Conv3d(2 * out_dim, out_dim, kernel_size=3, padding=1)
        self.act = nn.LeakyReLU(_ACT_SLOPE)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(_run_blocks(self.blocks, x))
        return self.act(self.fuse(torch.cat([x, skip], dim=1)))


class Head(nn.Module):
    """Up-sampling to full resolution, concat with the stem, conv + LeakyReLU, 1-channel conv."""

    def __init__(self, in_dim: int, stem: int, factor: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_dim, stem, kernel_size=factor, stride=factor)
        self.fuse = nn.Conv3d(2 * stem, stem, kernel_size=3, padding=1)
        self.act = nn.LeakyReLU(_ACT_SLOPE)
        self.out = nn.Conv3d(stem, 1, kernel_size=1)

    def forward(self, x: torch.Tensor, stem: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fuse(torch.cat([self.up(x), stem], dim=1)))
        return self.out(x)


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
                             nn.InstanceNorm3d(stem_channels, affine=True), nn.LeakyReLU(_ACT_SLOPE))
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
            nn.Conv3d(2, w, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(_ACT_SLOPE),
            nn.Conv3d(w, 2 * w, kernel_size=4, stride=2, padding=1, bias=False),
            nn.InstanceNorm3d(2 * w, affine=True), nn.LeakyReLU(_ACT_SLOPE),
            nn.Conv3d(2 * w, 4 * w, kernel_size=4, stride=2, padding=1, bias=False),
            nn.InstanceNorm3d(4 * w, affine=True), nn.LeakyReLU(_ACT_SLOPE),
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
