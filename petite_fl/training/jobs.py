"""Single-site jobs as the CLIs and experiments run them: pretrain, fine-tune, evaluate, infer.

Each job takes the composed config, works on a site (`data.sites`: a synthetic scanner
name, generated on first use, or a manifest path), writes its files atomically into a
folder derived from the config (`config.config_hash`: running the same command again
resumes or reuses), and returns them.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from petite_fl import __version__
from petite_fl.artifacts import load_adapter, load_backbone, save_adapter, save_backbone
from petite_fl.atomic import atomic_path, write_csv, write_json
from petite_fl.config import config_hash, expand_path
from petite_fl.data.manifest import read_manifest
from petite_fl.data.patches import site_patch_dataset
from petite_fl.data.sites import resolve_site, site_split
from petite_fl.data.synthetic import GENERATOR_VERSION, SynthSpec
from petite_fl.modelcard import inference_settings, make_card
from petite_fl.models.ablation import transformer_ablated
from petite_fl.models.base import Backbone
from petite_fl.models.registry import build_from_config, resolve_model_config
from petite_fl.peft.apply import (
    PeftModelState,
    adapter_state_dict,
    apply_peft,
    count_parameters,
    load_adapter_state,
    merge_peft,
)
from petite_fl.peft.spec import PeftSpec, spec_from_config
from petite_fl.scanners import available_scanners, get_scanner
from petite_fl.tracking import job_tracker, step_recorder
from petite_fl.training.device import device_and_amp
from petite_fl.training.inference import evaluate_site, summarise
from petite_fl.training.objectives import Adversarial, make_objective
from petite_fl.training.schedule import Schedule
from petite_fl.training.settings import check_settings
from petite_fl.training.trainer import train

# -- pretrain --------------------------------------------------------------------------


def source_data_key(cfg: DictConfig) -> Any:
    """What the source's training data depends on: for a synthetic scanner its generator
    settings, its number of training subjects and its imaging physics (a recalibrated
    scanner must not reuse a stale backbone; another scanner's size or profile, or more
    test subjects, need not retrain it)."""
    source = str(cfg.source)
    if source not in available_scanners() or Path(source).is_file():
        return str(expand_path(source))
    spec = SynthSpec.from_config(cfg.data.synth)
    physics = {k: v for k, v in asdict(get_scanner(source)).items() if k not in ("rationale", "source")}
    common = {k: v for k, v in asdict(spec).items() if k not in ("scanners", "splits", "sizes", "subjects")}
    # subjects fill train first and each one's data depends on its index only: only the training count matters
    return {"generator": GENERATOR_VERSION, **common, "train": dict(spec.splits_for(source))["train"],
            "physics": physics}


def default_backbone_path(cfg: DictConfig) -> Path:
    # The resolved constructor arguments, not just the preset's name: a changed preset
    # must not reuse a stale cached backbone.
    model = resolve_model_config(str(cfg.model.name), str(cfg.model.preset), **dict(cfg.model.overrides or {}))
    key = config_hash(__version__, model, cfg.train.pretrain, cfg.train.loss, cfg.train.patch_scale,
                      cfg.train.batch_size, source_data_key(cfg), cfg.data.loader, str(cfg.source), cfg.seed)
    name = f"{cfg.model.name}-{cfg.model.preset}-{Path(str(cfg.source)).stem}-{key}.safetensors"
    return expand_path(cfg.paths.cache) / "backbones" / name


def pretrain(cfg: DictConfig, out: Path | None = None, quiet: bool = False) -> tuple[Path, dict[str, Any]]:
    """Full training of a backbone on the source site's training split (reused if done)."""
    path = Path(out) if out else default_backbone_path(cfg)
    if path.is_file():
        return path, load_backbone(path)[1]
    check_settings(cfg)
    torch.manual_seed(int(cfg.seed))
    manifest = resolve_site(cfg, cfg.source)
    device, amp = device_and_amp(cfg)
    model = build_from_config(cfg.model).to(device)
    objective = make_objective(cfg.train, model.name, str(cfg.model.preset), device)
    site, patch = site_split(cfg, manifest, "train", model.size_multiple, purpose="to learn from")
    dataset = site_patch_dataset(site, "train", cfg.data.loader, seed=int(cfg.seed), patch=patch)
    folder = expand_path(cfg.paths.cache) / "runs" / "pretrain" / path.stem  # tracking only
    with job_tracker(cfg, folder, "pretrain", path.stem, Path(str(cfg.source)).stem) as tracker:
        result = train(model, dataset, objective,
                       steps=int(cfg.train.pretrain.steps), lr=float(cfg.train.pretrain.lr), train_cfg=cfg.train,
                       device=device, amp=amp, checkpoint=path.with_suffix(".ckpt"),
                       label=f"pretraining {model.name} on {Path(str(cfg.source)).stem}", quiet=quiet,
                       on_step=step_recorder(tracker))
        tracker.final({"loss": result.final_loss, "steps": result.steps, "seconds": result.seconds})
    meta = save_backbone(model, path, provenance={"source": str(cfg.source), "preset": str(cfg.model.preset),
                                           "steps": result.steps, "patch": list(patch),
                                           "schedule": Schedule.from_config(cfg.train, result.steps).describe(),
                                           "final_loss": result.final_loss, "seconds": result.seconds})
    if isinstance(objective, Adversarial):
        with atomic_path(path.with_suffix(".disc.pt")) as tmp:
            torch.save(objective.d.state_dict(), tmp)
    path.with_suffix(".ckpt").unlink(missing_ok=True)
    return path, meta


def backbone_for(cfg: DictConfig, quiet: bool = False) -> Path:
    return expand_path(cfg.backbone) if cfg.backbone else pretrain(cfg, quiet=quiet)[0]


# -- fine-tune -------------------------------------------------------------------------


def finetune_dir(cfg: DictConfig, backbone_sha: str) -> Path:
    if cfg.out:
        return expand_path(cfg.out)
    key = config_hash(cfg.peft, cfg.train.finetune, cfg.train.patch_scale, cfg.train.batch_size, cfg.data.loader,
                      str(cfg.target), backbone_sha, cfg.seed)
    label = str(cfg.peft.name)
    return expand_path(cfg.paths.cache) / "runs" / "finetune" / f"{Path(str(cfg.target)).stem}-{label}-{key}"


def finetune(cfg: DictConfig, quiet: bool = False) -> tuple[Path, dict[str, Any]]:
    """PEFT / Mix-PEFT / full fine-tuning on the target site → adapter file (+ JSON spec)."""
    check_settings(cfg)
    backbone_path = backbone_for(cfg, quiet)
    device, amp = device_and_amp(cfg)
    model, meta = load_backbone(backbone_path, device)
    spec = spec_from_config(cfg.peft, model)
    out = finetune_dir(cfg, meta["sha256"])
    adapter_path = out / "adapter.safetensors"
    if adapter_path.is_file():
        return adapter_path, load_adapter(adapter_path, meta)[1]
    state = apply_peft(model, spec)
    model.to(device)
    trainable, total = count_parameters(model, state)
    torch.manual_seed(int(cfg.seed))
    manifest = resolve_site(cfg, cfg.target)
    preset = str(meta["provenance"].get("preset", cfg.model.preset))  # the discriminator must match
    objective = make_objective(cfg.train, model.name, preset, device)
    disc = backbone_path.with_suffix(".disc.pt")
    if isinstance(objective, Adversarial) and disc.is_file():
        objective.d.load_state_dict(torch.load(disc, map_location=device, weights_only=True))
    steps = int(cfg.train.finetune.steps) if spec.kind != "none" else 0
    site, patch = site_split(cfg, manifest, "train", model.size_multiple, purpose="to learn from")
    dataset = site_patch_dataset(site, "train", cfg.data.loader, seed=int(cfg.seed) + 1, patch=patch)
    with job_tracker(cfg, out, "finetune", out.name, Path(str(cfg.target)).stem) as tracker:
        result = train(model, dataset, objective, steps=steps,
                       lr=float(cfg.peft.lr), train_cfg=cfg.train, device=device, amp=amp,
                       checkpoint=out / "checkpoint.pt",
                       label=f"fine-tuning {spec.label} on {Path(str(cfg.target)).stem}", quiet=quiet,
                       on_step=step_recorder(tracker))
        tracker.final({"loss": result.final_loss, "steps": result.steps, "seconds": result.seconds,
                       "trainable_percent": 100.0 * trainable / total})
    save_adapter(adapter_path, adapter_state_dict(model, state), spec.to_dict(), meta, extra={
        "target": str(cfg.target), "patch": list(patch), "trainable_percent": 100.0 * trainable / total,
        "trainable_parameters": trainable, "steps": result.steps,
        "schedule": Schedule.from_config(cfg.train, result.steps).describe(),
        "final_loss": result.final_loss, "seconds": result.seconds, "backbone_file": str(backbone_path),
        "card": make_card(site=Path(str(cfg.target)).stem, run=out.name, strategy="single-site", peft=spec.label,
                          rounds=None, steps=result.steps, training_scans=read_manifest(manifest).counts().get("train"),
                          metrics={"final_loss": result.final_loss}, backbone_sha256=str(meta["sha256"]),
                          inference=inference_settings(cfg, patch))})
    (out / "checkpoint.pt").unlink(missing_ok=True)
    return adapter_path, load_adapter(adapter_path, meta)[1]


# -- using a backbone + adapter ---------------------------------------------------------


def load_model(backbone_path: Path, adapter_path: Path | None, device: torch.device,
               merge: bool = True) -> tuple[Backbone, dict[str, Any], dict[str, Any] | None]:
    """A backbone with its adapter applied (and merged where possible) for inference."""
    model, meta = load_backbone(backbone_path, device)
    if adapter_path is None:
        return model.eval(), meta, None
    tensors, adapter_meta = load_adapter(adapter_path, meta)
    state: PeftModelState = apply_peft(model, PeftSpec.from_dict(adapter_meta["peft"]))
    load_adapter_state(model, state, tensors)
    model.to(device)
    if merge:
        merge_peft(model, state)
    return model.eval(), meta, adapter_meta


def evaluate(cfg: DictConfig, site_ref: str, backbone_path: Path, adapter_path: Path | None,
             out: Path | None = None, quiet: bool = False,
             ablate: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Metrics per subject of the evaluation split, their mean ± std; CSV and JSON in `out`.

    `ablate`: with the backbone's transformer outputs zeroed (`models.ablation`).
    """
    device, amp = device_and_amp(cfg)
    model, _, adapter_meta = load_model(backbone_path, adapter_path, device)
    manifest = resolve_site(cfg, site_ref)
    split = str(cfg.train.eval.split)
    site, roi = site_split(cfg, manifest, split, model.size_multiple, purpose="to evaluate (train.eval.split)",
                           truth=True)
    with transformer_ablated(model) if ablate else nullcontext():
        rows = evaluate_site(model, site, split, roi, device=device, eval_cfg=cfg.train.eval,
                             foreground_threshold=float(cfg.data.loader.foreground_threshold), amp=amp, quiet=quiet)
    summary = {"site": site.manifest.site, "split": split, "subjects": len(rows),
               "peft": (adapter_meta or {}).get("peft", {"kind": "none"}), "metrics": summarise(rows)}
    if out is not None:
        write_metrics(Path(out), rows, summary)
    return rows, summary


def write_metrics(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    write_csv(out / "metrics.csv", rows)
    write_json(out / "metrics.json", {**summary, "per_subject": rows})


def infer_file(cfg: DictConfig, input_path: Path, output_path: Path, backbone_path: Path,
               adapter_path: Path | None) -> Path:
    """NIfTI in → NIfTI out with a backbone (+ adapter file) and the config's inference settings."""
    device, amp = device_and_amp(cfg)
    model, meta, adapter_meta = load_model(backbone_path, adapter_path, device)
    # The window of the adapter's training (the target scanner), else of the pretraining.
    roi = tuple((adapter_meta or {}).get("patch") or meta["provenance"].get("patch") or model.example_input().shape[2:])
    return predict_file(model, input_path, output_path, inference_settings(cfg, roi), device=device, amp=amp)


def predict_array(model: Backbone, data: np.ndarray, zooms: tuple[float, ...], settings: Mapping[str, Any], *,
                  device: torch.device, amp: bool) -> np.ndarray:
    """Predict one RAS+ float32 volume whole; the result is on the same grid, in the input's units.

    `settings` is an adapter card's `inference` block (patch, scaling, overlap, sw_batch_size,
    region): the settings a run's test metrics were measured with, so that they reproduce.
    The prediction goes back to the input's units with the input's own map (`data.scalings`:
    × the factor for `grey-matter`, the input's range for `minmax`). A NIfTI file and a DICOM
    series (`adapters.infer`) both come here.
    """
    from petite_fl.data.scalings import get_scaling
    from petite_fl.training.inference import predict_volume

    scaling = get_scaling(settings["scaling"], "the adapter card's inference.scaling")
    to_network = scaling.of_input(data, zooms)
    pred = predict_volume(model, to_network.apply(data), tuple(int(p) for p in settings["patch"]),
                          device=device, overlap=float(settings["overlap"]),
                          sw_batch_size=int(settings["sw_batch_size"]), amp=amp,
                          region=str(settings.get("region", "full")))
    return to_network.invert(pred)  # back to the input's units


def predict_file(model: Backbone, input_path: Path, output_path: Path, settings: Mapping[str, Any], *,
                 device: torch.device, amp: bool) -> Path:
    """Predict one NIfTI file whole-volume (`predict_array`) and write the result with the input's affine and header,
    in the file's own orientation."""
    import nibabel as nib

    from petite_fl.data.nifti import load_volume

    volume = load_volume(input_path, what="input")
    pred = predict_array(model, volume.data, volume.zooms, settings, device=device, amp=amp)
    original = nib.load(input_path)  # header and affine only: load_volume above bounded this file's claim
    # The model ran on the RAS+ array: put the result back in the file's own orientation.
    to_original = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")),
                                                  nib.orientations.io_orientation(original.affine))
    data = nib.orientations.apply_orientation(pred, to_original).astype(np.float32)
    header = original.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    if len(header.get_data_shape()) == 4:
        header.set_data_shape(data.shape)
    img = nib.Nifti1Image(data, original.affine, header=header)
    with atomic_path(output_path) as tmp:
        nib.save(img, tmp)
    return output_path
