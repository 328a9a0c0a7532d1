"""Denoise scans with a site's own adapter: `petite infer --site scanner3 IN... --out DIR`.

A site holds its adapters (`catalog`) and, in its backbone cache, the backbones they were
trained on by SHA-256. Inference picks one adapter, loads the backbone it names (refusing
any other), and predicts every input with the settings of the adapter's card, the ones
the run's final test was measured with: so a run's test scans come out with the run's
test PSNR (tests/test_infer_site.py). Every input is checked before the first prediction,
and each output gets a JSON sidecar naming what made it, by hash.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from petite_fl import __version__
from petite_fl.adapters.catalog import AdapterEntry, file_sha256, pick, read_header
from petite_fl.atomic import write_json
from petite_fl.console import console
from petite_fl.data.nifti import load_volume
from petite_fl.data.scalings import get_scaling
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.federation.site.paths import cached_backbone
from petite_fl.modelcard import inference_settings
from petite_fl.training.device import resolve_device, use_amp
from petite_fl.training.jobs import load_model, predict_file

SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class InferenceJob:
    """One input scan and the two files it becomes."""

    input: Path
    output: Path
    sidecar: Path
    units: str | None = None  # BIDS `Units` of the input's own sidecar, carried over


def nifti_stem(path: Path) -> str | None:
    """`sub-01_pet` for `sub-01_pet.nii.gz` or `.nii`; None for any other file."""
    name = path.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def collect_inputs(items: Sequence[Path]) -> list[Path]:
    """Files as given, folders as their `*.nii` / `*.nii.gz` files in name order; a file named twice once."""
    found: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            scans = sorted(p for p in path.iterdir() if p.is_file() and nifti_stem(p))
            if not scans:
                raise PetiteError(f"{path}: a folder without *.nii or *.nii.gz files")
            found += scans
        elif path.is_file():
            if not nifti_stem(path):
                raise PetiteError(f"{path}: not a NIfTI file name (*.nii or *.nii.gz)")
            found.append(path)
        else:
            raise PetiteError(f"{path}: no such file or folder")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _input_units(scan: Path) -> str | None:
    """`Units` of the scan's BIDS sidecar (`<name>.json` beside it), if it has one."""
    sidecar = scan.with_name(f"{nifti_stem(scan)}.json")
    if not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PetiteError(f"{sidecar}: the sidecar of input {scan.name} is not readable JSON ({exc})") from None
    units = data.get("Units") if isinstance(data, dict) else None
    return None if units is None else str(units)


def plan(inputs: Sequence[Path], out: Path) -> list[InferenceJob]:
    """`out/<input name>` and `out/<stem>.json` per input; refuses outputs that share a name or overwrite an input.

    Every input is read through (a truncated file fails here, not after an hour of predicting)."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise PetiteError(f"--out {out}: a file, not a folder")
    protected = {p.resolve(): p for p in inputs}
    protected.update({p.with_name(f"{nifti_stem(p)}.json").resolve(): p for p in inputs})
    jobs, taken = [], {}
    for scan in inputs:
        stem = nifti_stem(scan)
        if stem in taken:
            raise PetiteError(f"inputs {taken[stem]} and {scan} would both write {out / stem}.*: rename one or "
                              "infer them into different --out folders")
        taken[stem] = scan
        job = InferenceJob(scan, out / scan.name, out / f"{stem}.json")
        for written in (job.output, job.sidecar):
            if written.resolve() in protected:
                raise PetiteError(f"output {written} would overwrite input {protected[written.resolve()]}: "
                                  "choose another --out folder")
        load_volume(scan, what="input")
        jobs.append(InferenceJob(scan, job.output, job.sidecar, _input_units(scan)))
    return jobs


def _recorded_sha256(path: Path) -> str:
    return str(read_header(path, "backbone").get("sha256"))


def backbone_of(adapter: AdapterEntry, site_root: Path, site: str, backbone: Path | None = None) -> Path:
    """The backbone the adapter was trained on: `backbone` if given (and it is that one), else the site's cached copy.

    The file's recorded hash is checked here, its content against that hash when it is loaded."""
    want = adapter.backbone_sha256
    what = f"the adapter of site {adapter.site} run {adapter.run}"
    if backbone is not None:
        path = Path(backbone).expanduser()
        if not path.is_file():
            raise PetiteError(f"--backbone {path}: file not found")
        held = _recorded_sha256(path)
        if held != want:
            raise PetiteError(f"--backbone {path} is backbone {held[:12]}…, but {what} was trained on {want[:12]}…: "
                              "give that backbone, or leave out --backbone to use the site's cached copy")
        return path
    path = cached_backbone(site_root, site, want)
    if not path.is_file():
        raise PetiteError(f"site {site}: backbone {want[:12]}… that {what} was trained on is not in "
                          f"{path.parent}; give it with --backbone FILE")
    held = _recorded_sha256(path)
    if held != want:
        raise PetiteError(f"{path}: the cache entry for backbone {want[:12]}… holds backbone {held[:12]}…: refused; "
                          "delete it and give the right backbone with --backbone FILE")
    return path


def settings_of(adapter: AdapterEntry, cfg: DictConfig) -> tuple[dict[str, Any], str]:
    """The card's inference settings, or (an adapter from before cards) the config's with the adapter's patch."""
    block = adapter.card.get("inference")
    if block:
        get_scaling(block.get("scaling"), f"{adapter.path.name}: the card's inference.scaling")  # before any scan
        return dict(block), "card"
    patch = adapter.meta.get("patch")
    if not patch:
        raise PetiteError(f"{adapter.path}: the adapter records neither a card nor its training patch; "
                          "use `petite infer -i IN -o OUT --backbone FILE --adapter FILE`")
    return inference_settings(cfg, patch), "config"


def inference_device(setting: str | None, cfg: DictConfig) -> tuple[torch.device, bool]:
    """`auto`: CUDA when present; CUDA runs with mixed precision (`train.amp`, on by default with CUDA).

    `setting` None: the config's `train.device`."""
    if setting is not None and setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {setting}: CUDA is not available on this machine (use auto or cpu)")
    device = resolve_device(str(setting or cfg.train.device))
    return device, use_amp(cfg.train.amp, device)


def infer_site(cfg: DictConfig, site: str, items: Sequence[Path], out: Path, *, run: str = "latest",
               site_root: Path | None = None, device: str | None = None, backbone: Path | None = None,
               quiet: bool = False) -> list[dict[str, Any]]:
    """Predict every input with the site's adapter of `run`; returns the sidecars written (one per input)."""
    root = Path(site_root if site_root is not None else cfg.federation.site_root).expanduser()
    torch_device, amp = inference_device(device, cfg)
    adapter = pick(root, site, run)
    backbone_path = backbone_of(adapter, root, site, backbone)
    settings, source = settings_of(adapter, cfg)
    jobs = plan(collect_inputs(items), out)
    model, meta, adapter_meta = load_model(backbone_path, adapter.path, torch_device)
    try:
        adapter_file = str(adapter.path.relative_to(root))
    except ValueError:
        adapter_file = adapter.path.name
    common = {"site": adapter.site, "run": adapter.run, "strategy": adapter.strategy, "peft": adapter.peft,
              "peft_spec": adapter_meta["peft"], "adapter": {"file": adapter_file, "sha256": file_sha256(adapter.path)},
              "backbone": {"sha256": meta["sha256"], "model": meta["model"]}, "inference": settings,
              "inference_from": source, "device": str(torch_device), "mixed_precision": amp,
              "petite_fl": __version__}
    written = []
    log_lines = not quiet and not console.is_terminal
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=quiet or log_lines, transient=True, console=console) as progress:
        task = progress.add_task(f"denoising with {adapter.site}/{adapter.run}", total=len(jobs))
        for i, job in enumerate(jobs, 1):
            begin = time.perf_counter()
            predict_file(model, job.input, job.output, settings, device=torch_device, amp=amp)
            sidecar = {**common, "input": job.input.name, "output": job.output.name,
                       "seconds": round(time.perf_counter() - begin, 3),
                       "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
            if job.units is not None:
                sidecar["Units"] = job.units
            write_json(job.sidecar, sidecar)
            written.append(sidecar)
            progress.advance(task)
            if log_lines:
                console.print(f"{i}/{len(jobs)} {job.input.name} → {job.output} ({sidecar['seconds']:.1f} s)",
                              markup=False)
    return written
