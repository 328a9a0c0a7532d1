"""What each benchmark section measures: CPU-sized with --quick, the paper's sizes otherwise."""

from __future__ import annotations

from typing import Any


def plan(quick: bool, device: str) -> dict[str, Any]:
    """What each section measures: CPU-sized with --quick, the paper's sizes otherwise."""
    if quick:
        return {
            # (model, preset, patch, batch): paper-size networks at the paper's patch, small batches on a CPU
            "train_cases": [("unetr", "paper", 64, 1), ("unetr", "paper", 64, 2), ("cvtgan", "paper", 64, 2)],
            "train_steps": (2, 3),                                                   # (warm-up, timed)
            "infer_preset": "tiny", "infer_patch_scale": 0.5,
            "fl_preset": "tiny", "fl_train": "tiny",
            # (rounds, local steps): fixed vs per-round cost; "compare": one arm of the default comparison
            "overhead": [(3, 10), (5, 100), (2, 8, "compare")],
            "scaling": {"sites": (5, 10, 20), "rounds": (1, 2, 4), "steps": 2},
            "compare_overrides": [],
            # the default comparison's site round vs its bare steps: one site's CPU share in `petite compare` (1) and 2
            "site_rounds": {"rounds": 5, "threads": (1, 2), "bare": (2, 3)},
        }
    return {
        "train_cases": [("unetr", "paper", 64, 4), ("cvtgan", "paper", 64, 4)],
        "train_steps": (3, 10),
        "infer_preset": "paper", "infer_patch_scale": 1.0,
        "fl_preset": "paper", "fl_train": "default",
        "overhead": [(3, 20), (5, 100)],
        "scaling": {"sites": (5, 10, 20), "rounds": (1, 2, 4), "steps": 5},
        "compare_overrides": ["model.preset=paper", "train=default", "federation.local_steps=50"],
        "site_rounds": {"rounds": 5, "threads": (2,), "bare": (2, 3)},
    }
