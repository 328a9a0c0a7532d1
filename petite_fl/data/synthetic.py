"""The embedded synthetic five-scanner data set: deterministic, cached, NIfTI on disk.

Each (scanner, subject) gets its own random stream derived from (seed, scanner name,
subject index), so results do not depend on the number of worker processes, and adding
a scanner does not change the others' data.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any

import numpy as np

from petite_fl.atomic import write_json
from petite_fl.config import expand_path
from petite_fl.data.acquisition import Scan, acquire, noise_ratio
from petite_fl.data.dataset_name import check_dataset_name
from petite_fl.data.manifest import SPLITS, write_manifest
from petite_fl.data.nifti import save_volume
from petite_fl.data.patients import Patient, Population, draw_patient
from petite_fl.data.phantom import render, sample_anatomy
from petite_fl.errors import ConfigError
from petite_fl.scanners import Scanner, get_scanner

#: Bump when the generator's output changes for the same spec: caches are then rebuilt.
#: 2: per-subject count level (dose, weight, uptake time); ground truth and region labels saved.
GENERATOR_VERSION = 2
DATASET_FILE = "dataset.json"
MANIFEST_FILE = "manifest.json"
#: The images of a subject on disk: the two a site trains on, then the simulation's ground
#: truth (noise-free activity) and region labels, which are never trained on.
IMAGE_KINDS = ("input", "target")
TRUTH_KINDS = ("truth", "regions")


@dataclass(frozen=True)
class SynthSpec:
    """What to generate; mirrors `data.synth` in the Hydra config."""

    scanners: tuple[str, ...]
    subjects: int
    splits: tuple[tuple[str, int], ...]
    seed: int
    frames: int = 6
    explicit_frames: bool = False
    hypometabolism: float = 0.3
    background: float = 0.02
    gm_concentration: float = 10000.0
    #: per-scanner splits that replace `splits` for that scanner (small and large sites)
    sizes: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()
    #: per-subject protocol ranges (dose, weight, uptake time): `data.synth.patients`
    patients: Population = field(default_factory=Population)

    @classmethod
    def from_config(cls, synth: Any) -> SynthSpec:
        splits = _splits(synth.splits, "data.synth.splits")
        scanners = tuple(str(s) for s in synth.scanners)
        sizes = dict(synth.get("sizes") or {})
        for name in list(sizes):
            get_scanner(str(name))  # a typo is an error; a scanner left out of the data set is ignored
            if str(name) not in scanners:
                sizes.pop(name)
        spec = cls(
            scanners=scanners,
            subjects=int(synth.subjects),
            splits=tuple((name, splits.get(name, 0)) for name in SPLITS),
            seed=int(synth.seed),
            frames=int(synth.frames),
            explicit_frames=bool(synth.explicit_frames),
            hypometabolism=float(synth.hypometabolism),
            background=float(synth.background),
            gm_concentration=float(synth.gm_concentration),
            patients=Population.from_config(synth.get("patients")),
            sizes=tuple((str(name), tuple((k, {**splits, **_splits(sizes[name], f"data.synth.sizes.{name}")}.get(k, 0))
                                          for k in SPLITS)) for name in sorted(sizes)),
        )
        spec.validate()
        return spec

    def validate(self) -> None:
        if not self.scanners:
            raise ConfigError("data.synth.scanners: list at least one scanner")
        if self.subjects < 1:
            raise ConfigError(f"data.synth.subjects must be at least 1, got {self.subjects}")
        counts = dict(self.splits)
        if any(v < 0 for v in counts.values()) or sum(counts.values()) != self.subjects:
            raise ConfigError(
                f"data.synth.splits {counts} must be non-negative and add up to "
                f"data.synth.subjects={self.subjects}"
            )
        for name, splits in self.sizes:
            if name not in self.scanners:
                raise ConfigError(f"data.synth.sizes: scanner '{name}' is not in data.synth.scanners "
                                  f"{list(self.scanners)}")
            counts = dict(splits)
            if any(v < 0 for v in counts.values()) or sum(counts.values()) < 1:
                raise ConfigError(f"data.synth.sizes.{name}: {counts} must be non-negative with at least one subject")
        if self.frames < 1:
            raise ConfigError(f"data.synth.frames must be at least 1, got {self.frames}")
        if not 0.0 <= self.hypometabolism <= 1.0:
            raise ConfigError("data.synth.hypometabolism is a fraction in [0, 1]")
        self.patients.validate()

    def splits_for(self, scanner: str) -> tuple[tuple[str, int], ...]:
        """The (split, count) pairs of one scanner: its `sizes` entry or the common `splits`."""
        return dict(self.sizes).get(scanner, self.splits)

    def subjects_for(self, scanner: str) -> int:
        return sum(n for _, n in self.splits_for(scanner))

    def split_of(self, index: int, scanner: str | None = None) -> str:
        """Subjects fill train, then val, then test, in index order."""
        edge = 0
        for name, count in (self.splits if scanner is None else self.splits_for(scanner)):
            edge += count
            if index < edge:
                return name
        raise IndexError(index)


def _splits(raw: Any, where: str) -> dict[str, int]:
    try:
        splits = {str(k): int(v) for k, v in dict(raw).items()}
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a mapping of split to a whole number, got {raw!r}") from None
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ConfigError(f"{where}: unknown split(s) {unknown} (allowed: {SPLITS})")
    return splits


def subject_id(index: int) -> str:
    return f"sub-{index + 1:03d}"


def subject_rng(seed: int, scanner: str, index: int) -> np.random.Generator:
    """An independent, reproducible stream per (seed, scanner, subject)."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(scanner.encode()), index]))


@dataclass(frozen=True)
class Subject:
    """One patient imaged by one scanner, in memory."""

    scan: Scan  # activity units (grey matter ~ 1 × the subject's global uptake)
    regions: np.ndarray  # uint8 labels (phantom.REGION_AD, REGION_REFERENCE, 0)
    patient: Patient
    counts_per_voxel: float  # this scan's count level at grey-matter uptake, one frame


def synthesize(scanner: Scanner, index: int, spec: SynthSpec) -> Subject:
    """One subject imaged by one scanner: its scan, region labels and protocol."""
    rng = subject_rng(spec.seed, scanner.name, index)
    anatomy = sample_anatomy(rng, spec.hypometabolism)
    patient = draw_patient(rng, spec.patients)
    activity, regions = render(anatomy, scanner.matrix, scanner.affine)
    counts = scanner.acquisition.counts_per_voxel * patient.count_scale
    scan = acquire(activity, scanner, rng, spec.frames, spec.background, spec.explicit_frames, counts=counts,
                   motion_mm=patient.motion_mm)
    return Subject(scan=scan, regions=regions, patient=patient, counts_per_voxel=counts)


def synthesize_subject(scanner: Scanner, index: int, spec: SynthSpec) -> Scan:
    """One subject imaged by one scanner, in memory (activity units, grey matter ~ 1)."""
    return synthesize(scanner, index, spec).scan


def fingerprint(spec: SynthSpec, scanners: list[Scanner]) -> str:
    """Hash of everything that determines the files' bytes."""
    physics = [{k: v for k, v in asdict(s).items() if k not in ("rationale", "source")} for s in scanners]
    blob = json.dumps({"v": GENERATOR_VERSION, "spec": asdict(spec), "scanners": physics}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def dataset_dir(data_cfg: Any) -> Path:
    """Where the configured data set lives: `<data.root>/<data.name>`."""
    return expand_path(data_cfg.root) / check_dataset_name(data_cfg.name)


def site_manifest(data_cfg: Any, scanner: str) -> Path:
    return dataset_dir(data_cfg) / scanner / MANIFEST_FILE


def _write_subject(job: tuple[Scanner, int, SynthSpec, str]) -> dict[str, Any]:
    scanner, index, spec, folder = job
    subject = synthesize(scanner, index, spec)
    scan, sid = subject.scan, subject_id(index)
    # Decay-corrected Bq/mL, as scanners export: the concentration scales with dose over weight.
    units = spec.gm_concentration * subject.patient.concentration_scale
    for kind, volume in (("input", scan.input), ("target", scan.target), ("truth", scan.noise_free)):
        # int16 with a scale slope, as scanners export: half the disk of float32.
        save_volume(volume * units, scanner.affine,
                    Path(folder) / scanner.name / f"{sid}_{kind}.nii.gz", dtype=np.int16)
    save_volume(subject.regions, scanner.affine, Path(folder) / scanner.name / f"{sid}_regions.nii.gz",
                dtype=np.uint8)
    p = subject.patient
    return {"scanner": scanner.name, "id": sid, "split": spec.split_of(index, scanner.name),
            "noise_ratio": round(noise_ratio(scan), 4), "counts_per_voxel": round(subject.counts_per_voxel, 3),
            "dose_mbq": round(p.dose_mbq, 1), "weight_kg": round(p.weight_kg, 1),
            "uptake_min": round(p.uptake_min, 1), "motion_mm": round(p.motion_mm, 2)}


def is_current(out_dir: Path, expected: str) -> bool:
    """True when `out_dir` holds a complete data set with this fingerprint."""
    info_path = out_dir / DATASET_FILE
    if not info_path.is_file():
        return False
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if info.get("fingerprint") != expected:
        return False
    return all(
        (out_dir / s["scanner"] / f"{s['id']}_{k}.nii.gz").is_file()
        for s in info.get("subjects", []) for k in (*IMAGE_KINDS, *TRUTH_KINDS)
    )


def generate(
    spec: SynthSpec,
    out_dir: str | Path,
    workers: int = 0,
    force: bool = False,
    on_subject: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Generate the data set into `out_dir` unless it is already there.

    Returns (dataset info, generated?). The data set is built in a sibling folder and
    moved into place at the end, so an interrupted run never leaves a half data set.
    """
    spec.validate()
    out_dir = Path(out_dir)
    scanners = [get_scanner(name) for name in spec.scanners]
    expected = fingerprint(spec, scanners)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (e.g. simulated sites) may ask for the same data set at once:
    # one generates, the others wait and then find it current.
    with open(out_dir.with_name(f".{out_dir.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and is_current(out_dir, expected):
            return json.loads((out_dir / DATASET_FILE).read_text()), False
        return _generate_locked(spec, scanners, expected, out_dir, workers, on_subject), True


def _generate_locked(
    spec: SynthSpec,
    scanners: list[Scanner],
    expected: str,
    out_dir: Path,
    workers: int,
    on_subject: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    jobs = [(s, i, spec, str(staging)) for s in scanners for i in range(spec.subjects_for(s.name))]
    results = _run_jobs(jobs, workers, on_subject)
    results.sort(key=lambda r: (spec.scanners.index(r["scanner"]), r["id"]))

    for scanner in scanners:
        rows = [r for r in results if r["scanner"] == scanner.name]
        write_manifest(
            staging / scanner.name / MANIFEST_FILE, site=scanner.name, scanner=scanner.name,
            # truth and regions: optional fields, simulation only (never trained on)
            subjects=[{"id": r["id"], "split": r["split"],
                       **{k: f"{r['id']}_{k}.nii.gz" for k in (*IMAGE_KINDS, *TRUTH_KINDS)}} for r in rows],
        )
    info = {
        "format": "petite-fl/synthetic-dataset",
        "generator_version": GENERATOR_VERSION,
        "fingerprint": expected,
        "spec": asdict(spec),
        "scanners": {s.name: {k: v for k, v in asdict(s).items() if k != "source"} for s in scanners},
        "sites": {s.name: f"{s.name}/{MANIFEST_FILE}" for s in scanners},
        "subjects": results,
    }
    write_json(staging / DATASET_FILE, info)
    _swap_in(staging, out_dir)
    return info


def _run_jobs(jobs: list, workers: int, on_subject: Callable | None) -> list[dict[str, Any]]:
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    results = []
    if workers <= 1:
        for job in jobs:
            results.append(_write_subject(job))
            if on_subject:
                on_subject(results[-1])
        return results
    # fork: workers need no re-import (and no __main__ guard in callers' scripts); they
    # use numpy/scipy/nibabel only, never torch, so forking a torch-using parent is safe.
    method = "fork" if "fork" in get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context(method)) as pool:
        for result in pool.map(_write_subject, jobs):
            results.append(result)
            if on_subject:
                on_subject(result)
    return results


def _swap_in(staging: Path, out_dir: Path) -> None:
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
    staging.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def disk_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
