"""Trainable-parameter counts of every method and Mix-PEFT combination at paper size.

Counted on the meta device (no memory, no weights): only shapes matter.
"""

from __future__ import annotations

import torch

from petite_fl.models.registry import available_backbones, build_backbone
from petite_fl.peft.apply import apply_peft, count_parameters
from petite_fl.peft.registry import available_methods
from petite_fl.peft.spec import PETITE_CHOICE, PeftSpec, feasible_mixes, spec_from_config


def single_methods() -> list[str]:
    """Every registered method alone, in registry order, then full fine-tuning (no `none`)."""
    return [m for m in available_methods() if m not in ("none", "full")] + ["full"]


def _count(backbone: str, preset: str, spec_or_cfg: PeftSpec | dict) -> tuple[str, int, int]:
    with torch.device("meta"):
        model = build_backbone(backbone, preset)
    spec = spec_or_cfg if isinstance(spec_or_cfg, PeftSpec) else spec_from_config(spec_or_cfg, model)
    state = apply_peft(model, spec)
    trainable, total = count_parameters(model, state)
    return spec.label, trainable, total


def peft_table(preset: str = "paper") -> list[dict[str, object]]:
    """Rows: backbone, kind (single | mix), label, trainable, total, percent, petite?"""
    rows = []
    for backbone in available_backbones():
        with torch.device("meta"):
            model = build_backbone(backbone, preset)
        entries = [("single", {"name": m}) for m in single_methods()] + [("mix", s) for s in feasible_mixes(model)]
        for kind, spec in entries:
            label, trainable, total = _count(backbone, preset, spec)
            petite = kind == "mix" and (spec.encoder, spec.decoder) == PETITE_CHOICE.get(backbone)
            rows.append({"backbone": backbone, "kind": kind, "label": label, "trainable": trainable,
                         "total": total, "percent": 100.0 * trainable / total, "petite": petite})
    return rows
