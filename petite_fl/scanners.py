"""The scanner registry: one YAML file per scanner in the `scanner/` config group.

A scanner is the unit of domain shift in PETITE: its own matrix, voxel grid, resolution,
count level and reconstruction. Adding one means adding one YAML file (see README).
Same style as `petite_fl.registry` (names, get, the same one-line error), but its entries
are files looked up on each call, since `PETITE_FL_CONFIG_PATH` can add folders at any time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from petite_fl.config import config_dirs
from petite_fl.errors import ConfigError
from petite_fl.registry import unknown_entry

GROUP = "scanner"


@dataclass(frozen=True)
class Reconstruction:
    """How the scanner's images are reconstructed, as far as noise texture is concerned."""

    algorithm: str
    #: Exponent p of the in-plane noise power spectrum |k|^p: 1 for filtered back-projection
    #: (the full ramp), smaller for iterative methods that damp high frequencies.
    noise_ramp: float


@dataclass(frozen=True)
class Acquisition:
    """What the synthetic generator needs to image a phantom like this scanner."""

    fwhm_mm: tuple[float, float, float]
    #: Noise-equivalent counts per voxel at grey-matter uptake in one 5-min frame:
    #: one frame's grey-matter noise is 1/sqrt(counts_per_voxel) of its mean.
    counts_per_voxel: float
    recon: Reconstruction


@dataclass(frozen=True)
class Scanner:
    """A PET scanner profile: the geometry from the paper plus simulated acquisition."""

    name: str
    vendor: str
    site: str
    matrix: tuple[int, int, int]
    voxel_mm: tuple[float, float, float]
    patch: tuple[int, int, int]
    acquisition: Acquisition
    rationale: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def affine(self) -> np.ndarray:
        """RAS+ voxel-to-world affine (mm), field of view centred on the origin."""
        zooms = np.asarray(self.voxel_mm, dtype=np.float64)
        aff = np.diag([*zooms, 1.0])
        aff[:3, 3] = -zooms * (np.asarray(self.matrix) - 1) / 2.0
        return aff

    @property
    def fov_mm(self) -> tuple[float, float, float]:
        return tuple(float(n * v) for n, v in zip(self.matrix, self.voxel_mm, strict=True))


def _triple(raw: Any, where: str, kind: type) -> tuple:
    values = list(raw) if isinstance(raw, (list, tuple)) else None
    if values is None or len(values) != 3:
        raise ConfigError(f"{where}: expected a list of 3 numbers, got {raw!r}")
    try:
        out = tuple(kind(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected numbers, got {raw!r}") from None
    if any(v <= 0 for v in out):
        raise ConfigError(f"{where}: every value must be positive, got {raw!r}")
    if kind is int and any(float(a) != float(b) for a, b in zip(values, out, strict=True)):
        raise ConfigError(f"{where}: expected whole numbers, got {raw!r}")
    return out


def scanner_from_dict(data: dict[str, Any], source: str = "<dict>") -> Scanner:
    """Build and validate a `Scanner`; errors name the file and field."""
    required = ("name", "vendor", "site", "matrix", "voxel_mm", "patch", "acquisition")
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(f"{source}: missing field(s) {', '.join(missing)}")
    acq = data["acquisition"]
    if not isinstance(acq, dict) or not {"fwhm_mm", "counts_per_voxel", "recon"} <= set(acq):
        raise ConfigError(f"{source}: acquisition needs fwhm_mm, counts_per_voxel and recon")
    recon = acq["recon"]
    if not isinstance(recon, dict) or not {"algorithm", "noise_ramp"} <= set(recon):
        raise ConfigError(f"{source}: acquisition.recon needs algorithm and noise_ramp")
    try:
        counts = float(acq["counts_per_voxel"])
        ramp = float(recon["noise_ramp"])
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: counts_per_voxel and noise_ramp must be numbers") from None
    if counts <= 0:
        raise ConfigError(f"{source}: acquisition.counts_per_voxel must be positive, got {counts}")
    if not 0 <= ramp <= 2:
        raise ConfigError(f"{source}: acquisition.recon.noise_ramp must be in [0, 2], got {ramp}")
    matrix = _triple(data["matrix"], f"{source}: matrix", int)
    patch = _triple(data["patch"], f"{source}: patch", int)
    if any(p > m for p, m in zip(patch, matrix, strict=True)):
        raise ConfigError(f"{source}: patch {list(patch)} is larger than the matrix {list(matrix)}")
    return Scanner(
        name=str(data["name"]),
        vendor=str(data["vendor"]),
        site=str(data["site"]),
        matrix=matrix,
        voxel_mm=_triple(data["voxel_mm"], f"{source}: voxel_mm", float),
        patch=patch,
        acquisition=Acquisition(
            fwhm_mm=_triple(acq["fwhm_mm"], f"{source}: acquisition.fwhm_mm", float),
            counts_per_voxel=counts,
            recon=Reconstruction(algorithm=str(recon["algorithm"]), noise_ramp=ramp),
        ),
        rationale={str(k): str(v) for k, v in (data.get("rationale") or {}).items()},
        source=source,
    )


def _scanner_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for folder in config_dirs():
        for path in sorted((folder / GROUP).glob("*.yaml")):
            files.setdefault(path.stem, path)  # built-in entries win over extra folders
    return files


def available_scanners() -> list[str]:
    """Names of every registered scanner (one per YAML file)."""
    return sorted(_scanner_files())


@cache
def _load(path: Path) -> Scanner:
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OSError, OmegaConfBaseException) as exc:
        raise ConfigError(f"{path}: cannot read scanner file: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a scanner file must be a mapping of fields")
    scanner = scanner_from_dict(data, source=str(path))
    if scanner.name != path.stem:
        raise ConfigError(f"{path}: name '{scanner.name}' must match the file name '{path.stem}'")
    return scanner


def get_scanner(name: str) -> Scanner:
    """The registered scanner called `name`, or a ConfigError listing the known ones."""
    files = _scanner_files()
    if name not in files:
        raise unknown_entry("scanner", name, sorted(files))
    return _load(files[name])
