"""LayerNorm tuning: train only the normalisation layers' affine parameters.

Zhao et al., "Tuning LayerNorm in Attention", ICLR 2024 — HF peft's `LNTuningConfig`,
which trains a copy of each target norm and leaves the backbone's own untouched.
"""

from __future__ import annotations

from peft import LNTuningConfig
from peft.tuners.ln_tuning.layer import LNTuningLayer

from petite_fl.models.base import SiteKind
from petite_fl.peft.base import Method, inject_hf_peft
from petite_fl.peft.registry import register_method


@register_method
class LayerNormTuning(Method):
    name = "layernorm"
    summary = "LayerNorm tuning (HF peft LN tuning)"
    site_kind = SiteKind.NORM

    def inject(self, model, part, args) -> None:
        targets = self.sites(model, part)
        if not targets:
            return
        inject_hf_peft(LNTuningConfig(target_modules=targets), model)

    def merge(self, model) -> None:
        for module in model.modules():
            if isinstance(module, LNTuningLayer) and not module.merged:
                module.merge()
