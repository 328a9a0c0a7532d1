"""The blocks of the 3D CVT-GAN generator (Zeng et al., MICCAI 2022): CvT attention with
convolutional projections, CvT blocks, encoder and decoder stages, and the output head.

The attention keeps CvT's convolutional projections (depthwise conv → norm → pointwise Linear),
with the pointwise Linears named `to_q` / `to_k` / `to_v` so LoRA targets them, and reads an
optional `vpt_prompts` (T, C) parameter that adds T prompt keys/values (VPT-deep, efficiently).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: LeakyReLU's negative slope, in the generator and its discriminator
ACT_SLOPE = 0.2


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
        self.act = nn.LeakyReLU(ACT_SLOPE)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(_run_blocks(self.blocks, x))
        return self.act(self.fuse(torch.cat([x, skip], dim=1)))


class Head(nn.Module):
    """Up-sampling to full resolution, concat with the stem, conv + LeakyReLU, 1-channel conv."""

    def __init__(self, in_dim: int, stem: int, factor: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_dim, stem, kernel_size=factor, stride=factor)
        self.fuse = nn.Conv3d(2 * stem, stem, kernel_size=3, padding=1)
        self.act = nn.LeakyReLU(ACT_SLOPE)
        self.out = nn.Conv3d(stem, 1, kernel_size=1)

    def forward(self, x: torch.Tensor, stem: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fuse(torch.cat([self.up(x), stem], dim=1)))
        return self.out(x)
