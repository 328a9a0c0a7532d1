"""UNETR (Hatamizadeh et al., WACV 2022) as PETITE uses it: MONAI's network, PETITE settings.

Encoder = the ViT (88.2 M at paper size); decoder = MONAI's CNN blocks that turn ViT
hidden states 3, 6, 9 and 12 into the output (13.5 M). Two changes to MONAI's forward:
the position embedding is interpolated to the input's token grid (a backbone pretrained
on 64³ patches must run on scanner 5's 64×64×32 grid), and learned VPT prompt
tokens are prepended to the ViT sequence when a tuner has set them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from monai.networks.blocks import SABlock
from monai.networks.nets import UNETR
from torch import nn

from petite_fl.models.base import Backbone, PromptSlot, Site, SiteKind
from petite_fl.models.registry import register_backbone

PATCH = 16
DECODER = ("encoder1", "encoder2", "encoder3", "encoder4", "decoder5", "decoder4", "decoder3", "decoder2", "out")

PRESETS = {
    # The paper's settings; pretraining patches of 64³.
    "paper": dict(img_size=(64, 64, 64), feature_size=32, hidden_size=768, mlp_dim=3072, num_layers=12,
                  num_heads=12, proj_type="perceptron", norm_name="instance", res_block=True, dropout_rate=0.0,
                  residual=False),
    # Same code, CPU-sized: 12 layers kept because hidden states 3, 6, 9 are tapped. A global
    # residual (output = input + network) so that minutes of CPU training start from the
    # short scan itself instead of from noise (without it, 300 steps learn nothing: 9.7 dB);
    # the paper's UNETR has none. 48³ windows give a 3³ token grid (2³ at 32³, where zeroing
    # every hidden state cost 0.04 dB: the transformer carried nothing), a narrow CNN
    # (feature 4) and a wider ViT (hidden 96) put the signal through the transformer at the
    # cost per step of the old 32³ preset (≈ 0.45 s for 4 windows on 2 CPU cores).
    "tiny": dict(img_size=(48, 48, 48), feature_size=4, hidden_size=96, mlp_dim=384, num_layers=12,
                 num_heads=4, proj_type="perceptron", norm_name="instance", res_block=True, dropout_rate=0.0,
                 residual=True),
}


@register_backbone("unetr", presets=PRESETS)
class PetiteUNETR(Backbone):
    """MONAI UNETR (1 → 1 channel) with position-embedding interpolation and VPT slots."""

    size_multiple = PATCH
    #: LoRA alone goes on query and key of the ViT only (PETITE's 147 k at paper size);
    #: on the CNN decoder it is used within Mix-PEFT.
    single_method_parts: ClassVar[dict[str, tuple[str, ...]]] = {"lora": ("encoder",)}

    def __init__(self, img_size, feature_size, hidden_size, mlp_dim, num_layers, num_heads,
                 proj_type, norm_name, res_block, dropout_rate, residual: bool = False) -> None:
        super().__init__(img_size=list(img_size), feature_size=feature_size, hidden_size=hidden_size,
                         mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads, proj_type=proj_type,
                         norm_name=norm_name, res_block=res_block, dropout_rate=dropout_rate, residual=residual)
        self.residual = residual
        self.unetr = UNETR(in_channels=1, out_channels=1, img_size=tuple(img_size), feature_size=feature_size,
                           hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads, proj_type=proj_type,
                           norm_name=norm_name, res_block=res_block, dropout_rate=dropout_rate)
        if num_layers != 12:
            raise ValueError("UNETR taps ViT layers 3, 6, 9 and 12: num_layers must be 12")
        # Separate q/k/v projections (same parameter count as MONAI's fused qkv), so that
        # LoRA can act on query and key only, as in PETITE.
        for block in self.unetr.vit.blocks:
            block.attn = SABlock(hidden_size, num_heads, dropout_rate, qkv_bias=False, use_combined_linear=False)
            # MONAI builds a cross-attention LayerNorm that UNETR never uses: drop it so
            # that no PEFT method places (or counts) parameters that cannot change the output.
            block.norm_cross_attn = nn.Identity()
        self.grid = tuple(s // PATCH for s in img_size)
        if residual:  # start exactly at the identity (the short scan), as residual denoisers do
            nn.init.zeros_(self.unetr.out.conv.conv.weight)
            nn.init.zeros_(self.unetr.out.conv.conv.bias)

    # -- Backbone contract --------------------------------------------------------------

    def part_modules(self) -> dict[str, list[str]]:
        return {"encoder": ["unetr.vit"], "decoder": [f"unetr.{n}" for n in DECODER]}

    def _modules_in(self, part: str, *types: type) -> list[tuple[str, nn.Module]]:
        prefixes = self.part_modules()[part]
        return [(n, m) for n, m in self.named_modules()
                if isinstance(m, types) and any(n.startswith(p + ".") or n == p for p in prefixes)]

    def peft_sites(self, kind: SiteKind, part: str, **args: Any) -> list[Site] | list[PromptSlot] | list[str]:
        kind = SiteKind(kind)
        hidden = self.config["hidden_size"]
        blocks = [f"unetr.vit.blocks.{i}" for i in range(len(self.unetr.vit.blocks))]
        if kind is SiteKind.LINEAR:
            if part == "encoder":  # query and key of self-attention (PETITE)
                return [f"{b}.attn.{proj}" for b in blocks for proj in ("to_q", "to_k")]
            return [n for n, _ in self._modules_in("decoder", nn.Conv3d)]
        if kind is SiteKind.BLOCK_OUTPUT:
            if part == "encoder":  # after the MLP of each transformer block
                return [Site(f"{b}.mlp", hidden, "tokens") for b in blocks]
            return [Site(f"unetr.{n}", self._out_channels(n), "channels") for n in DECODER[:-1]]
        if kind is SiteKind.LAYER_OUTPUT:
            # After linear, norm and embedding layers, except where a later layer would undo
            # it: a shift of the keys cancels in the softmax, and a conv followed by instance
            # norm loses any per-channel scale and shift. So: not on to_k, and in the CNN
            # decoder after the norms, the up-sampling convolutions and the output conv.
            if part == "encoder":
                return [Site(n, m.out_features if isinstance(m, nn.Linear) else m.normalized_shape[0], "tokens")
                        for n, m in self._modules_in("encoder", nn.Linear, nn.LayerNorm)
                        if not n.endswith(".to_k")]
            return [Site(n, m.out_channels if isinstance(m, nn.ConvTranspose3d) else m.num_features, "channels")
                    for n, m in self._modules_in("decoder", nn.ConvTranspose3d, nn.InstanceNorm3d)] + \
                [Site("unetr.out.conv.conv", 1, "channels")]
        if kind is SiteKind.PROMPT:
            if part != "encoder":
                return []  # a CNN decoder has no token sequence
            tokens = int(args.get("tokens", 50))
            deep = bool(args.get("deep", False))
            return [PromptSlot(b, hidden, tokens if (deep or i == 0) else 0) for i, b in enumerate(blocks)]
        if kind is SiteKind.NORM:
            return [n for n, m in self._modules_in(part, nn.LayerNorm, nn.InstanceNorm3d, nn.BatchNorm3d)
                    if getattr(m, "weight", None) is not None]
        return []

    def peft_defaults(self, method: str, part: str) -> dict[str, Any]:
        if method == "lora":
            return {"r": 4, "alpha": 8}
        if method == "adapter":
            return {"reduction": 16 if part == "encoder" else 4}
        if method == "vpt":
            return {"tokens": 50, "deep": False}
        return {}

    def _out_channels(self, name: str) -> int:
        f = self.config["feature_size"]
        return {"encoder1": f, "encoder2": 2 * f, "encoder3": 4 * f, "encoder4": 8 * f, "decoder5": 8 * f,
                "decoder4": 4 * f, "decoder3": 2 * f, "decoder2": f}[name]

    def transformer_blocks(self) -> list[nn.Module]:
        # The twelve ViT blocks and the final norm: every hidden state the decoder reads.
        return [*self.unetr.vit.blocks, self.unetr.vit.norm]

    # -- forward ------------------------------------------------------------------------

    def _position_embedding(self, grid: tuple[int, int, int]) -> torch.Tensor:
        pe = self.unetr.vit.patch_embedding.position_embeddings
        if grid == self.grid:
            return pe
        c = pe.shape[-1]
        volume = pe.reshape(1, *self.grid, c).permute(0, 4, 1, 2, 3)
        volume = F.interpolate(volume, size=grid, mode="trilinear", align_corners=False)
        return volume.permute(0, 2, 3, 4, 1).reshape(1, -1, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s % PATCH for s in x.shape[2:]):
            raise ValueError(f"UNETR input size {tuple(x.shape[2:])} must be a multiple of {PATCH}")
        u, vit = self.unetr, self.unetr.vit
        grid = tuple(s // PATCH for s in x.shape[2:])
        embed = vit.patch_embedding
        tokens = embed.dropout(embed.patch_embeddings(x) + self._position_embedding(grid))
        n_prompt, hidden_states = 0, []
        for block in vit.blocks:
            prompts = getattr(block, "vpt_prompts", None)
            if prompts is not None:  # VPT: prepend (first block) or replace (deep) prompts
                tokens = torch.cat([prompts.expand(x.shape[0], -1, -1), tokens[:, n_prompt:]], dim=1)
                n_prompt = prompts.shape[0]
            tokens = block(tokens)
            hidden_states.append(tokens[:, n_prompt:])
        last = vit.norm(tokens)[:, n_prompt:]

        def feat(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(1, 2).reshape(x.shape[0], t.shape[-1], *grid)

        enc1 = u.encoder1(x)
        enc2 = u.encoder2(feat(hidden_states[3]))
        enc3 = u.encoder3(feat(hidden_states[6]))
        enc4 = u.encoder4(feat(hidden_states[9]))
        dec3 = u.decoder5(feat(last), enc4)
        dec2 = u.decoder4(dec3, enc3)
        dec1 = u.decoder3(dec2, enc2)
        out = u.out(u.decoder2(dec1, enc1))
        return x + out if self.residual else out
