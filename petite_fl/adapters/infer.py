"""Denoise scans with a site's own adapter: `petite infer --site scanner3 IN... --out DIR`.

A site holds its adapters (`catalog`) and, in its backbone cache, the backbones they were
trained on by SHA-256. Inference picks one adapter, loads the backbone it names (refusing
any other), and predicts every input with the settings of the adapter's card, the ones
the run's final test was measured with: so a run's test scans come out with the run's
test PSNR (tests/test_infer_site.py). Every NIfTI input is checked before the first prediction,
and each output gets a JSON sidecar naming what made it, by hash.

DICOM inputs (a folder, a DICOMDIR, a DICOM file: #28) are series read by the importer's
readers and paired by its rules (`dicom_in`); each comes back as a derived PET series
(`dicom_out`) and/or a NIfTI named by a hash of its series UID. A series that cannot be
denoised (not PET, static, several bed positions…) is one skip line, and the batch goes on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from petite_fl import __version__
from petite_fl.adapters.catalog import AdapterEntry, file_sha256, pick, read_header
from petite_fl.adapters.dicom_in import dicom_candidates, is_dicom_source, read_input
from petite_fl.adapters.dicom_out import write_derived_series
from petite_fl.atomic import write_json
from petite_fl.console import console
from petite_fl.data.nifti import load_volume, save_volume
from petite_fl.data.scalings import get_scaling
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.federation.site.paths import cached_backbone
from petite_fl.modelcard import inference_settings
from petite_fl.training.device import resolve_device, use_amp
from petite_fl.training.jobs import load_model, predict_array, predict_file

SUFFIXES = (".nii.gz", ".nii")
OUT_FORMATS = ("nifti", "dicom", "both")


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


@dataclass
class InferenceReport:
    """What `infer_site` did: a sidecar per denoised input, one line per skipped series, the DICOM folders written."""

    sidecars: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    derived: list[Path] = field(default_factory=list)   # one folder per derived DICOM series, in input order


@dataclass
class Inputs:
    """The inputs sorted by kind: NIfTI files, and DICOM series (a `find_series` candidate, the input it is under)."""

    nifti: list[Path] = field(default_factory=list)
    dicom: list[tuple[Any, Path]] = field(default_factory=list)


def sort_inputs(items: Sequence[Path]) -> Inputs:
    """Files as given; folders as their `*.nii` / `*.nii.gz` files in name order and the DICOM series under them.

    A file or series named twice counts once; anything neither NIfTI nor DICOM is one line."""
    found = Inputs()
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            scans = sorted(p for p in path.iterdir() if p.is_file() and nifti_stem(p))
            series = dicom_candidates(path)
            if not scans and not series:
                raise PetiteError(f"{path}: a folder without NIfTI (*.nii, *.nii.gz) or DICOM files")
            found.nifti += scans
            found.dicom += [(c, path) for c in series]
        elif path.is_file():
            if nifti_stem(path):
                found.nifti.append(path)
            elif is_dicom_source(path):
                found.dicom += [(c, path.parent) for c in dicom_candidates(path)]
            else:
                raise PetiteError(f"{path}: neither a NIfTI file (*.nii, *.nii.gz) nor DICOM (a DICOM file, "
                                  "a folder of them or a DICOMDIR)")
        else:
            raise PetiteError(f"{path}: no such file or folder")
    unique: dict[Path, Path] = {}
    for path in found.nifti:
        unique.setdefault(path.resolve(), path)
    found.nifti = list(unique.values())
    series_seen: dict[Any, tuple[Any, Path]] = {}
    for candidate, where in found.dicom:
        series_seen.setdefault(candidate.resolve() if isinstance(candidate, Path) else repr(candidate),
                               (candidate, where))
    found.dicom = list(series_seen.values())
    return found


def collect_inputs(items: Sequence[Path]) -> list[Path]:
    """The NIfTI files of `sort_inputs`: files as given, folders' `*.nii` / `*.nii.gz` in name order, each once."""
    return sort_inputs(items).nifti


def check_out(out: Path, inputs: Inputs, out_format: str | None) -> None:
    """Refuse an --out inside a DICOM input (a rerun would read its own output) and DICOM out of NIfTI in."""
    if out_format is not None and out_format not in OUT_FORMATS:
        raise ConfigError(f"--out-format {out_format}: one of {', '.join(OUT_FORMATS)}")
    if out_format in ("dicom", "both") and inputs.nifti:
        raise ConfigError(f"--out-format {out_format}: input {inputs.nifti[0]} is NIfTI; a DICOM series is derived "
                          "only from a DICOM source (its patient, study and geometry): use --out-format nifti")
    target = Path(out).expanduser().resolve()
    for _, where in inputs.dicom:
        top = where.resolve()
        if target == top or top in target.parents:
            raise PetiteError(f"--out {out} is inside input {where}: its DICOM would be read as input by the next "
                              "run; choose a folder outside it")


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
               quiet: bool = False, out_format: str | None = None, input_minutes: float = 5.0) -> InferenceReport:
    """Denoise every input with the site's adapter of `run` into folder `out`.

    `items`: NIfTI files, DICOM files, DICOMDIRs and folders of either. `out_format`: `nifti`,
    `dicom` (a derived series per DICOM input, `InferenceReport.derived`) or `both`; None gives
    NIfTI for NIfTI inputs and DICOM for DICOM inputs. `input_minutes`: the short scan is the
    first minutes of a dynamic DICOM series (`petite-data import --input-minutes`). Bad NIfTI
    inputs stop the batch before any prediction; a DICOM series that cannot be denoised is a line
    in `InferenceReport.skipped` and the batch goes on.
    """
    root = Path(site_root if site_root is not None else cfg.federation.site_root).expanduser()
    torch_device, amp = inference_device(device, cfg)
    adapter = pick(root, site, run)
    backbone_path = backbone_of(adapter, root, site, backbone)
    settings, source = settings_of(adapter, cfg)
    inputs = sort_inputs(items)
    check_out(out, inputs, out_format)
    jobs = plan(inputs.nifti, out)
    model, meta, adapter_meta = load_model(backbone_path, adapter.path, torch_device)
    common = {**_made_by(adapter, root, meta, adapter_meta), "inference": settings, "inference_from": source,
              "device": str(torch_device), "mixed_precision": amp, "petite_fl": __version__}
    predict = _Predictor(model, settings, torch_device, amp, common)
    report = InferenceReport()
    log_lines = not quiet and not console.is_terminal
    total = len(jobs) + len(inputs.dicom)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=quiet or log_lines, transient=True, console=console) as progress:
        task = progress.add_task(f"denoising with {adapter.site}/{adapter.run}", total=total)
        for i, job in enumerate(jobs, 1):
            sidecar = predict.nifti(job)
            report.sidecars.append(sidecar)
            progress.advance(task)
            if log_lines:
                console.print(f"{i}/{total} {job.input.name} → {job.output} ({sidecar['seconds']:.1f} s)",
                              markup=False)
        for i, (candidate, _) in enumerate(inputs.dicom, len(jobs) + 1):
            try:
                sidecar, folder = predict.dicom(candidate, Path(out).expanduser(), out_format or "dicom",
                                                input_minutes)
            except PetiteError as exc:
                report.skipped.append(str(exc))
                line = f"skipped: {exc}"
            else:
                report.sidecars.append(sidecar)
                report.derived += [folder] if folder is not None else []
                line = f"{sidecar['stem']} ({sidecar['seconds']:.1f} s)"
            progress.advance(task)
            if log_lines:
                console.print(f"{i}/{total} {line}", markup=False, soft_wrap=True)
    return report


def _made_by(adapter: AdapterEntry, root: Path, meta: dict[str, Any], adapter_meta: dict[str, Any]) -> dict[str, Any]:
    """The sidecar's adapter and backbone, by hash (the adapter's file relative to the site root)."""
    try:
        adapter_file = str(adapter.path.relative_to(root))
    except ValueError:
        adapter_file = adapter.path.name
    return {"site": adapter.site, "run": adapter.run, "strategy": adapter.strategy, "peft": adapter.peft,
            "peft_spec": adapter_meta["peft"], "adapter": {"file": adapter_file, "sha256": file_sha256(adapter.path)},
            "backbone": {"sha256": meta["sha256"], "model": meta["model"]}}


@dataclass
class _Predictor:
    """The loaded model and what every sidecar says about it; one method per input kind."""

    model: Any
    settings: dict[str, Any]
    device: torch.device
    amp: bool
    common: dict[str, Any]
    stems: set[str] = field(default_factory=set)

    def nifti(self, job: InferenceJob) -> dict[str, Any]:
        begin = time.perf_counter()
        predict_file(self.model, job.input, job.output, self.settings, device=self.device, amp=self.amp)
        sidecar = {**self.common, "input": job.input.name, "output": job.output.name, **_timing(begin)}
        if job.units is not None:
            sidecar["Units"] = job.units
        write_json(job.sidecar, sidecar)
        return sidecar

    def dicom(self, candidate: Any, out: Path, out_format: str,
              input_minutes: float) -> tuple[dict[str, Any], Path | None]:
        """Denoise one DICOM series into `out`: `<stem>/` (derived series) and/or `<stem>.nii.gz`, `<stem>.json`."""
        begin = time.perf_counter()
        src = read_input(candidate, input_minutes)
        if src.stem in self.stems:
            raise PetiteError(f"{src.series.label}: the same series as an earlier input (denoised once)")
        self.stems.add(src.stem)
        pred = predict_array(self.model, src.volume, tuple(float(z) for z in np.linalg.norm(src.series.affine[:3, :3],
                                                                                             axis=0)),
                             self.settings, device=self.device, amp=self.amp)
        sidecar: dict[str, Any] = {**self.common, "stem": src.stem, "Units": src.series.units,
                                   "input": {"format": "dicom", "series_uid_sha256": src.uid_sha256,
                                             "frames": [k + 1 for k in src.frames],
                                             "input_minutes": src.input_minutes}}
        folder = None
        if out_format in ("nifti", "both"):
            save_volume(pred, src.series.affine, out / f"{src.stem}.nii.gz")
            sidecar["output"] = f"{src.stem}.nii.gz"
        if out_format in ("dicom", "both"):
            derived = write_derived_series(pred, src.series.affine, src.headers, out / src.stem,
                                           adapter_sha256=self.common["adapter"]["sha256"],
                                           backbone_sha256=self.common["backbone"]["sha256"], frames=src.frames,
                                           window=src.window, made_with=json.dumps(
                                               [self.common["inference"], self.common["mixed_precision"]],
                                               sort_keys=True, default=str))
            folder = derived.folder
            # the UID as a hash, like the source's: the series sits in the patient's record on the PACS
            sidecar["dicom_series"] = {"folder": folder.name,
                                       "series_uid_sha256": hashlib.sha256(derived.series_uid.encode()).hexdigest(),
                                       "instances": derived.instances}
        sidecar.update(_timing(begin))
        write_json(out / f"{src.stem}.json", sidecar)
        return sidecar, folder


def _timing(begin: float) -> dict[str, Any]:
    return {"seconds": round(time.perf_counter() - begin, 3),
            "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
