"""What the federated benchmark sections share: run overrides, an untrained backbone, data made ahead."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def fl_overrides(home: Path, backbone: Path, p: dict[str, Any], sites: list[str], rounds: int, steps: int,
                 name: str, extra: list[str] = (), workload: str = "bare") -> list[str]:
    """Overrides of one timed federated run: its own cache, backbone, sites, rounds and run name.

    `workload="bare"`: the tiny data set, no per-round validation; `"compare"`: the default
    comparison's data, per-round validation and test windows (`compare.default`'s sizing)."""
    sized = (["data=tiny", f"federation.eval_every={rounds + 1}"] if workload == "bare" else
             ["federation.eval_every=1", "train.eval.overlap=0.25"])
    return [f"paths.cache={home}", f"backbone={backbone}", f"model.preset={p['fl_preset']}", f"train={p['fl_train']}",
            *sized, "data.synth.workers=1", "strategy=fedavg", f"federation.sites=[{','.join(sites)}]",
            f"federation.rounds={rounds}", f"federation.local_steps={steps}",
            f"federation.run_name={name}", "federation.resume=false", f"federation.site_root={home}/sites-{name}",
            *extra]


def untrained_backbone(home: Path, model: str, preset: str) -> Path:
    """Timing does not depend on the weights: an untrained backbone needs no pretraining."""
    import torch

    from petite_fl.artifacts import save_backbone
    from petite_fl.models.registry import build_backbone

    path = home / f"{model}-{preset}-untrained.safetensors"
    if not path.is_file():
        torch.manual_seed(0)
        save_backbone(build_backbone(model, preset), path, {"source": "untrained (benchmark)", "preset": preset})
    return path


def prepare_data(overrides: list[str]) -> None:
    """Generate every site's data before the clock starts."""
    from petite_fl.config import compose
    from petite_fl.data.sites import resolve_site
    from petite_fl.runconfig import site_list

    cfg = compose("config", overrides)
    for site in site_list(cfg):
        resolve_site(cfg, site)
