"""Learning curve: does local PETITE on a data-poor scanner improve with more training scans?

A federation can only help a site whose own scans do not suffice, so before any comparison
relies on it, this experiment shows that the synthetic data set is data-limited. It
pretrains the backbone on `source` (the `training/jobs.py` pretraining), fine-tunes PETITE
on `target` with 1, 3, 8 and 16 of its training scans (the `jobs.py` fine-tuning; per
seed a nested draw of scans from the pool and its own training randomness), and scores
every model once, at the end, on the same fixed test subjects against the simulation's
ground truth (head-mask PSNR vs the noise-free image). Convergence is shown, not assumed:
the sizes of the gate are trained again with twice the steps. Intervals are paired over
test subjects and seeds (`petite_fl.statistics`). Settings: `configs/learning_curve/`.

Scaling: no per-volume min-max (`data.loader.scaling=none`). Input, target and truth of a
subject are divided by one factor computed from the input alone (`input_factor`), on
normalised copies written once per data set; the metrics are in those units.

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
from scipy.ndimage import gaussian_filter

from petite_fl.atomic import write_json
from petite_fl.config import compose, config_hash, expand_path, hydra_override
from petite_fl.console import console, run_cli
from petite_fl.data.manifest import read_manifest, write_manifest
from petite_fl.data.nifti import load_volume, save_volume
from petite_fl.data.sites import resolve_site, training_patch
from petite_fl.data.synthetic import GENERATOR_VERSION, SynthSpec, dataset_dir, fingerprint
from petite_fl.errors import ConfigError
from petite_fl.experiments.learning_curve_report import write_report
from petite_fl.metrics import foreground_mask, psnr
from petite_fl.scanners import get_scanner
from petite_fl.training.device import device_and_amp
from petite_fl.training.inference import predict_volume
from petite_fl.training.jobs import finetune, load_model, pretrain

GROUP = "learning_curve"
#: Bump when the normalised copies change (factor, files): they are then rewritten.
NORMALISATION_VERSION = 1


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
    shape = [f"data.synth.scanners=[{source},{target}]", f"data.synth.subjects={int(lc.source_scans)}",
             f"data.synth.splits={{train:{int(lc.source_scans)},val:0,test:0}}",
             f"data.synth.sizes={{{target}:{{train:{int(lc.pool)},val:0,test:{int(lc.test_subjects)}}}}}"]
    base = [*head, *lc.overrides, *shape, *rest]
    return compose(overrides=base), base


def check_steps(lc: DictConfig) -> int:
    """The convergence check's budget: `steps × check.factor` (2: doubled; 0.5: halved)."""
    return round(int(lc.steps) * float(lc.check.factor))


def input_factor(volume: np.ndarray, voxel_mm: tuple[float, ...]) -> float:
    """One scale per subject from its input alone: the mean of the input where the input,
    smoothed with σ = 12 mm, exceeds 0.3 of its maximum (the brain). The mask comes from a
    heavily smoothed image so that noise hardly selects it: on scanner 5 the factor of the
    one-frame input and of the six-frame target differ by < 1 %, where a σ of 2 voxels and
    a threshold of 0.5 gave 20-30 % (the noise's hot spots chose the mask)."""
    smooth = gaussian_filter(np.asarray(volume, np.float32), [12.0 / v for v in voxel_mm])
    return float(volume[smooth > 0.3 * float(smooth.max())].mean())


@dataclass(frozen=True)
class TestSubject:
    id: str
    input: np.ndarray  # normalised, like truth and target
    truth: np.ndarray
    target: np.ndarray


@dataclass(frozen=True)
class Prepared:
    folder: Path
    source: Path  # normalised source manifest (pretraining)
    pool: list[dict[str, str]]  # normalised target training scans, manifest rows in index order
    tests: list[TestSubject]
    scanner: str


def prepare(cfg: DictConfig, home: Path) -> Prepared:
    """Generate the data set (if needed) and its normalised copies (once per data set)."""
    source_manifest, target_manifest = resolve_site(cfg, str(cfg.source)), resolve_site(cfg, str(cfg.target))
    spec = SynthSpec.from_config(cfg.data.synth)
    key = config_hash(NORMALISATION_VERSION, GENERATOR_VERSION,
                      fingerprint(spec, [get_scanner(s) for s in spec.scanners]))
    folder = home / "data" / f"{dataset_dir(cfg.data).name}-{key}"
    rows = {name: _normalise(manifest, folder / name, with_truth=name == str(cfg.target))
            for name, manifest in ((str(cfg.source), source_manifest), (str(cfg.target), target_manifest))}
    source = folder / str(cfg.source) / "manifest.json"
    if not source.is_file():
        write_manifest(source, site=str(cfg.source), scanner=str(cfg.source),
                       subjects=[r for r in rows[str(cfg.source)] if r["split"] == "train"])
    tests = [TestSubject(r["id"], *(load_volume(r[k], what=k).data for k in ("input", "truth", "target")))
             for r in rows[str(cfg.target)] if r["split"] == "test"]
    pool = [r for r in rows[str(cfg.target)] if r["split"] == "train"]
    return Prepared(folder, source, pool, tests, str(cfg.target))


def _normalise(manifest: Path, out: Path, with_truth: bool) -> list[dict[str, str]]:
    """Copies of a site's volumes divided by `input_factor` (float32 NIfTI), as manifest rows."""
    rows = []
    for entry in read_manifest(manifest).subjects:
        kinds = {"input": entry.input, "target": entry.target}
        if with_truth:
            kinds["truth"] = entry.input.with_name(f"{entry.id}_truth.nii.gz")
        row = {"id": entry.id, "split": entry.split, **{k: str(out / f"{entry.id}_{k}.nii.gz") for k in kinds}}
        if not all(Path(row[k]).is_file() for k in kinds):
            first = load_volume(entry.input, what="input")
            factor = input_factor(first.data, tuple(float(z) for z in first.zooms))
            for kind, path in kinds.items():
                volume = first if kind == "input" else load_volume(path, what=kind)
                save_volume(volume.data / factor, volume.affine, row[kind])
        rows.append(row)
    return rows


def subset_manifest(prep: Prepared, size: int, seed: int) -> Path:
    """The manifest of one run's training scans: the first `size` of the seed's shuffle of the pool."""
    order = np.random.default_rng([seed, len(prep.pool)]).permutation(len(prep.pool))
    path = prep.folder / f"{prep.scanner}-n{size}-seed{seed}" / "manifest.json"
    if not path.is_file():
        write_manifest(path, site=prep.scanner, scanner=prep.scanner,
                       subjects=[{k: prep.pool[i][k] for k in ("id", "split", "input", "target")}
                                 for i in sorted(order[:size])])
    return path


def run_overrides(base: list[str], backbone: Path, manifest: Path, seed: int, steps: int,
                  warmup_fraction: float) -> list[str]:
    return [*base, hydra_override("backbone", backbone), hydra_override("target", manifest), f"seed={seed}",
            "peft=petite", f"train.finetune.steps={steps}",
            f"train.warmup_steps={max(1, round(warmup_fraction * steps))}"]


def score(model: torch.nn.Module, tests: list[TestSubject], roi: tuple[int, ...], device: torch.device,
          amp: bool, eval_cfg: Any) -> list[dict[str, float]]:
    """Head-mask PSNR of each test prediction against the truth (the primary metric) and the target.

    The head mask is the truth above 0.1 of its maximum. Small on purpose: it moves to the
    shared evaluation once that scores against the truth.
    """
    rows = []
    for t in tests:
        pred = torch.as_tensor(predict_volume(model, t.input, roi, device=device, overlap=float(eval_cfg.overlap),
                                              sw_batch_size=int(eval_cfg.sw_batch_size), amp=amp,
                                              region=str(eval_cfg.region)))
        truth = torch.as_tensor(t.truth)
        mask = foreground_mask(truth, 0.1)
        rows.append({"subject": t.id, "psnr_truth": float(psnr(pred, truth, mask)),
                     "psnr_target": float(psnr(pred, torch.as_tensor(t.target), mask))})
    return rows


def run(overrides: list[str], quiet: bool = False) -> tuple[dict[str, Any], Path]:
    """The whole experiment; returns the summary and the folder of its outputs."""
    start = time.perf_counter()
    cfg, base = compose_experiment(overrides)
    lc = cfg[GROUP]
    torch.set_num_threads(int(lc.threads))
    home = expand_path(cfg.paths.cache) / "learning_curve"
    say = (lambda *_: None) if quiet else (lambda text: console.print(text, markup=False, highlight=False))
    say(f"learning curve: local PETITE on {cfg.target}, pretrained on {cfg.source}; sizes {list(lc.sizes)}, "
        f"{lc.seeds} seed(s), {lc.steps} steps, {lc.test_subjects} test subjects")
    prep = prepare(cfg, home)
    timings = {"data_s": time.perf_counter() - start}
    t0 = time.perf_counter()
    backbone, _ = pretrain(compose(overrides=[*base, hydra_override("source", prep.source)]), quiet=quiet)
    timings["pretrain_s"] = time.perf_counter() - t0
    device, amp = device_and_amp(cfg)
    runs = [(n, s, int(lc.steps)) for n in lc.sizes for s in range(int(lc.seeds))]
    runs += [(n, s, check_steps(lc)) for n in lc.check.sizes for s in range(int(lc.seeds))]
    out = home / "runs" / config_hash(base)
    records: list[dict[str, Any]] = []
    backbone_model, _, _ = load_model(backbone, None, device)
    roi = training_patch(subset_manifest(prep, 1, 0), cfg.train, backbone_model.size_multiple)
    for row in score(backbone_model, prep.tests, roi, device, amp, lc.eval):
        records.append({"size": 0, "seed": 0, "steps": 0, **row})
    for i, (size, seed, steps) in enumerate(runs, start=1):
        records += _one_run(base, backbone, prep, size, seed, steps, lc, out, roi, device, amp)
        last = records[-1]
        say(f"[{i}/{len(runs)}] {size} scan(s), seed {seed}, {steps} steps: {last['train_s']:.0f} s "
            f"({last['train_s'] / steps:.3f} s/step, CPU {last['train_cpu_s'] / steps:.3f} s/step), test PSNR vs truth "
            f"{np.mean([r['psnr_truth'] for r in records[-len(prep.tests):]]):.2f} dB")
    timings["total_s"] = time.perf_counter() - start
    summary = write_report(out, records, cfg, timings)
    write_json(out / "config.json", {"config": OmegaConf.to_container(cfg, resolve=True), "overrides": base})
    return summary, out


def _one_run(base, backbone, prep, size, seed, steps, lc, out, roi, device, amp) -> list[dict[str, Any]]:
    manifest = subset_manifest(prep, size, seed)
    over = run_overrides(base, backbone, manifest, seed, steps, float(lc.warmup_fraction))
    rcfg = compose(overrides=over)
    folder = out / "models" / f"n{size}-seed{seed}-steps{steps}-{config_hash(rcfg.peft, rcfg.train, rcfg.data.loader)}"
    cpu = time.process_time()
    adapter, meta = finetune(compose(overrides=[*over, hydra_override("out", folder)]), quiet=True)
    cpu = time.process_time() - cpu  # ~0 when the adapter was already there (a resumed experiment)
    model, _, _ = load_model(backbone, adapter, device)
    rows = score(model, prep.tests, roi, device, amp, lc.eval)
    return [{"size": size, "seed": seed, "steps": steps, "train_s": float(meta["seconds"]), "train_cpu_s": cpu,
             **r} for r in rows]


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
