"""The model card each adapter file carries in its metadata (and in its JSON twin).

A card answers what a user asks of an adapter months later without the run's folders:
what it was trained on and with (spec, backbone hash, strategy, rounds, training scans),
how well it did (the final validation and test means), by which petite-fl, when, and how
to run it (the window, scaling and sliding-window settings its test metrics were measured
with, so that `petite infer --site` reproduces them).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from petite_fl import __version__

#: version of the card's layout (a reader may meet older files without a card)
CARD_FORMAT = 1


def inference_settings(cfg: DictConfig, patch: list[int] | tuple[int, ...]) -> dict[str, Any]:
    """How the final test was predicted: what inference needs to reproduce it."""
    ev = cfg.train.eval
    return {"patch": [int(p) for p in patch], "scaling": str(cfg.data.loader.scaling),
            "overlap": float(ev.overlap), "sw_batch_size": int(ev.sw_batch_size),
            "region": str(ev.get("region", "full")),
            "foreground_threshold": float(cfg.data.loader.foreground_threshold)}


def mean_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalar means of a site's final metrics (`val_psnr`, `test_ssim`, …); per-subject lists
    and counts are left out of the card."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.endswith("_subjects")
            and "_subject_" not in k and math.isfinite(float(v))}


def make_card(*, site: str, run: str | None, strategy: str, peft: str, rounds: int | None,
              training_scans: int | None, metrics: Mapping[str, Any], backbone_sha256: str,
              inference: Mapping[str, Any], steps: int | None = None) -> dict[str, Any]:
    return {"format": CARD_FORMAT, "site": site, "run": run, "strategy": strategy, "peft": peft,
            "rounds": rounds, "steps": steps, "training_scans": training_scans,
            "metrics": mean_metrics(metrics), "backbone_sha256": backbone_sha256,
            "petite_fl": __version__, "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "inference": dict(inference)}
