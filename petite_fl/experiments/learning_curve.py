"""Learning curve: does local PETITE on a data-poor scanner improve with more training scans?

A federation can only help a site whose own scans do not suffice, so before any comparison
relies on it, this experiment measures whether the synthetic data set is data-limited. It
pretrains the backbone on `source` (the `training/jobs.py` pretraining), fine-tunes PETITE
on `target` with 1, 3, 8 and 16 of its training scans (the `jobs.py` fine-tuning; per
seed a nested draw of scans from the pool and its own training randomness), and scores
every model once, at the end, on the same fixed test subjects against the simulation's
ground truth (head-mask PSNR vs the noise-free image). Convergence is shown, not assumed:
the sizes of the gate are trained again with twice the steps. Intervals are paired over
test subjects and seeds (`petite_fl.statistics`). Settings: `configs/learning_curve/`.

Everything runs through the product's own code paths: the data set's scaling
(`data.loader.scaling`, grey-matter by default: one factor from the input for input, target
and truth), `petite finetune`'s job, and the evaluation a comparison uses (`truth_psnr_fg`,
the head-mask PSNR against the truth, and `psnr_fg` against the six-frame target).

    python -m petite_fl.experiments.learning_curve                       # the gate table (2 CPU cores)
    python -m petite_fl.experiments.learning_curve learning_curve.seeds=5 learning_curve.steps=600
    python -m petite_fl.experiments.learning_curve learning_curve=tiny   # the code path in seconds

(`python -m simulation.learning_curve` is the same from a checkout.)
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from petite_fl.atomic import write_json
from petite_fl.config import compose, config_hash, expand_path, hydra_override
from petite_fl.console import console, run_cli
from petite_fl.data.manifest import OPTIONAL_FIELDS, read_manifest, write_manifest
from petite_fl.data.sites import resolve_site
from petite_fl.errors import ConfigError, DataError
from petite_fl.experiments.learning_curve_report import check_steps, write_report
from petite_fl.training.device import device_and_amp
from petite_fl.training.inference import evaluate_split
from petite_fl.training.jobs import finetune, load_model, pretrain

GROUP = "learning_curve"


def compose_experiment(overrides: list[str]) -> tuple[DictConfig, list[str]]:
    """The composed config and the override list every job of the experiment composes from.

    The experiment's group is added (`+learning_curve=default`, or the option a
    `learning_curve=NAME` override names); its `overrides` and the data set's shape come
    before the user's own, so that those win.
    """
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith(f"{GROUP}=")]
    rest = [o for o in overrides if not o.startswith(f"{GROUP}=")]
    head = [f"+{GROUP}={chosen[-1] if chosen else 'default'}"]
    lc = compose(overrides=[*head, *rest])[GROUP]
    first = compose(overrides=[*head, *lc.overrides, *rest])
    source, target = str(first.source), str(first.target)
    if source == target:
        raise ConfigError(f"learning curve: source and target are both '{source}'; pretrain on another scanner")
    sizes = [int(n) for n in lc.sizes]
    if min(sizes) < 1 or max(sizes) > int(lc.pool):
        raise ConfigError(f"learning_curve.sizes {sizes} must lie in [1, learning_curve.pool={lc.pool}]")
    for name in ("low", "high"):
        if int(lc.gate[name]) not in sizes:
            raise ConfigError(f"learning_curve.gate.{name}={lc.gate[name]} is not one of the sizes {sizes}")
    if int(lc.test_subjects) < 1 or int(lc.seeds) < 1 or int(lc.steps) < 1:
        raise ConfigError("learning_curve.test_subjects, .seeds and .steps must be at least 1")
    if not set(int(n) for n in lc.check.sizes) <= set(sizes):
        raise ConfigError(f"learning_curve.check.sizes {list(lc.check.sizes)} must be among the sizes {sizes}")
    if check_steps(lc) in (0, int(lc.steps)):
        raise ConfigError(f"learning_curve.check.factor={lc.check.factor} must give another number of steps than "
                          f"learning_curve.steps={lc.steps}")
    # the learning rate every run uses: the experiment's, or (null) the method's own peft.lr; composing
    # the method also refuses one that is not an entry of the peft group
    try:
        method_lr = float(compose(overrides=[f"peft={lc.peft}"]).peft.lr)
    except ConfigError as exc:
        raise ConfigError(f"learning_curve.peft={lc.peft} is not an entry of the peft group "
                          "(petite_fl/configs/peft/, e.g. petite, lora, full)") from exc
    lr = method_lr if lc.get("lr") is None else float(lc.lr)
    if not lr > 0:
        raise ConfigError(f"learning_curve.lr={lc.lr} must be a learning rate > 0 (or null: the method's own)")
    shape = [f"data.synth.scanners=[{source},{target}]",
             f"data.synth.subjects={int(lc.source_scans)}",
             f"data.synth.splits={{train:{int(lc.source_scans)},val:0,test:0}}",
             f"data.synth.sizes={{{target}:{{train:{int(lc.pool)},val:0,test:{int(lc.test_subjects)}}}}}"]
    base = [*head, *lc.overrides, *shape, *rest, f"learning_curve.lr={lr!r}"]  # resolved, after the user's
    return compose(overrides=base), base


@dataclass(frozen=True)
class Prepared:
    folder: Path  # the experiment's manifests (its runs' training subsets)
    source: Path  # the source's manifest (pretraining on its training split)
    target: Path  # the target's manifest: its test split is the fixed test set
    pool: list[dict[str, str]]  # the target's training scans, manifest rows in index order
    scanner: str


def prepare(cfg: DictConfig, home: Path) -> Prepared:
    """Generate the data set (if needed); the target's training scans are the pool runs draw from."""
    source, target = resolve_site(cfg, str(cfg.source)), resolve_site(cfg, str(cfg.target))
    entries = read_manifest(target).subjects
    if not all(e.truth is not None for e in entries):
        raise DataError(f"{target}: the learning curve scores against the ground truth, which this site's "
                        "manifest does not list (a simulated site has `truth` per row)")
    pool = [{"id": e.id, "split": e.split, "input": str(e.input), "target": str(e.target),
             **{k: str(getattr(e, k)) for k in OPTIONAL_FIELDS if getattr(e, k) is not None}}
            for e in entries if e.split == "train"]
    folder = home / "subsets" / config_hash(str(target), [r["id"] for r in pool])
    return Prepared(folder, source, target, pool, str(cfg.target))


def subset_manifest(prep: Prepared, size: int, seed: int) -> Path:
    """The manifest of one run's training scans: the first `size` of the seed's shuffle of the pool."""
    order = np.random.default_rng([seed, len(prep.pool)]).permutation(len(prep.pool))
    path = prep.folder / f"{prep.scanner}-n{size}-seed{seed}" / "manifest.json"
    if not path.is_file():
        write_manifest(path, site=prep.scanner, scanner=prep.scanner,
                       subjects=[prep.pool[i] for i in sorted(order[:size])])
    return path


def run_overrides(base: list[str], lc: DictConfig, backbone: Path, manifest: Path, seed: int,
                  steps: int) -> list[str]:
    return [*base, hydra_override("backbone", backbone), hydra_override("target", manifest), f"seed={seed}",
            f"peft={lc.peft}", f"peft.lr={float(lc.lr)!r}", f"train.finetune.steps={steps}"]


def score(cfg: DictConfig, prep: Prepared, model: torch.nn.Module, device: torch.device,
          amp: bool) -> list[dict[str, float]]:
    """Each fixed test subject's head-mask PSNR against the truth (the gate's metric) and the target,
    by the comparison's own evaluation (`training.inference.evaluate_split`)."""
    out = evaluate_split(cfg, prep.scanner, prep.target, model, "test", device, amp, per_subject=True)
    return [{"subject": i, "psnr_truth": t, "psnr_target": g} for i, (t, g) in
            enumerate(zip(out["test_subject_truth_psnr_fg"], out["test_subject_psnr_fg"], strict=True))]


def run(overrides: list[str], quiet: bool = False) -> tuple[dict[str, Any], Path]:
    """The whole experiment; returns the summary and the folder of its outputs."""
    start = time.perf_counter()
    cfg, base = compose_experiment(overrides)
    lc = cfg[GROUP]
    torch.set_num_threads(int(lc.threads))
    home = expand_path(cfg.paths.cache) / "learning_curve"
    say = (lambda *_: None) if quiet else (lambda text: console.print(text, markup=False, highlight=False))
    say(f"learning curve: local {lc.peft} (lr {float(lc.lr):g}) on {cfg.target}, pretrained on {cfg.source}; "
        f"sizes {list(lc.sizes)}, "
        f"{lc.seeds} seed(s), {lc.steps} steps, {lc.test_subjects} test subjects")
    prep = prepare(cfg, home)
    timings = {"data_s": time.perf_counter() - start}
    t0 = time.perf_counter()
    backbone, _ = pretrain(cfg, quiet=quiet)
    timings["pretrain_s"] = time.perf_counter() - t0
    device, amp = device_and_amp(cfg)
    runs = [(n, s, int(lc.steps)) for n in lc.sizes for s in range(int(lc.seeds))]
    runs += [(n, s, check_steps(lc)) for n in lc.check.sizes for s in range(int(lc.seeds))]
    out = home / "runs" / config_hash(base)
    # trained models are shared by every run of the experiment on this data and backbone (keyed by their
    # own settings below), so that a longer convergence check or another gate reuses what is trained
    models = home / "models" / config_hash(str(backbone), str(prep.target))
    backbone_model, _, _ = load_model(backbone, None, device)
    records = [{"size": 0, "seed": 0, "steps": 0, **row} for row in score(cfg, prep, backbone_model, device, amp)]
    for i, (size, seed, steps) in enumerate(runs, start=1):
        rows = _one_run(base, lc, backbone, prep, size, seed, steps, models, device, amp)
        records += rows
        say(f"[{i}/{len(runs)}] {size} scan(s), seed {seed}, {steps} steps: {rows[-1]['train_s']:.0f} s "
            f"({rows[-1]['train_s'] / steps:.3f} s/step, CPU {rows[-1]['train_cpu_s'] / steps:.3f} s/step), "
            f"test PSNR vs truth {np.mean([r['psnr_truth'] for r in rows]):.2f} dB")
    timings["total_s"] = time.perf_counter() - start
    summary = write_report(out, records, cfg, timings)
    write_json(out / "config.json", {"config": OmegaConf.to_container(cfg, resolve=True), "overrides": base})
    return summary, out


def _one_run(base: list[str], lc: DictConfig, backbone: Path, prep: Prepared, size: int, seed: int, steps: int,
             models: Path, device: torch.device, amp: bool) -> list[dict[str, Any]]:
    """Fine-tune on the seed's first `size` scans (cached by its settings), score it on the test subjects."""
    manifest = subset_manifest(prep, size, seed)
    over = run_overrides(base, lc, backbone, manifest, seed, steps)
    rcfg = compose(overrides=over)
    folder = models / f"n{size}-seed{seed}-steps{steps}-{config_hash(rcfg.peft, rcfg.train, rcfg.data.loader)}"
    cpu = time.process_time()
    adapter, meta = finetune(compose(overrides=[*over, hydra_override("out", folder)]), quiet=True)
    cpu = time.process_time() - cpu  # ~0 when the adapter was already there (a resumed experiment)
    model, _, _ = load_model(backbone, adapter, device)
    return [{"size": size, "seed": seed, "steps": steps, "train_s": float(meta["seconds"]), "train_cpu_s": cpu,
             **r} for r in score(rcfg, prep, model, device, amp)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m petite_fl.experiments.learning_curve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. learning_curve.seeds=5")
    args = parser.parse_args(argv)

    def body() -> int:
        summary, out = run(args.overrides)
        console.print(summary["markdown"], markup=False, highlight=False)
        console.print(f"written: {out / 'results.md'}, {out / 'results.csv'}, {out / 'results.json'}")
        return 0

    return run_cli("learning_curve", body)


if __name__ == "__main__":
    sys.exit(main())
