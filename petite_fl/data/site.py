"""A scanner site's data: validated NIfTI pairs, scaled, as patches or whole volumes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from petite_fl.data.manifest import SPLITS, Manifest, SubjectEntry, read_manifest
from petite_fl.data.nifti import Volume, check_pair, load_volume
from petite_fl.errors import DataError

SCALINGS = ("minmax", "none")


@dataclass(frozen=True)
class SubjectPair:
    """One subject's input and target on one RAS+ grid, as loaded (not yet scaled)."""

    entry: SubjectEntry
    input: Volume
    target: Volume

    @property
    def affine(self) -> np.ndarray:
        return self.input.affine


def load_pair(entry: SubjectEntry, manifest_path: Path) -> SubjectPair:
    """Load and validate one manifest row; errors name the manifest row and file."""
    where = entry.where(manifest_path)
    pair = SubjectPair(
        entry=entry,
        input=load_volume(entry.input, what=f"{where} input"),
        target=load_volume(entry.target, what=f"{where} target"),
    )
    check_pair(pair.input, pair.target, where)
    return pair


def load_pairs(
    manifest: Manifest, entries: Sequence[SubjectEntry]
) -> tuple[list[SubjectPair], list[str]]:
    """Every valid pair, and one problem line per invalid one (nothing raised)."""
    pairs, problems = [], []
    for entry in entries:
        try:
            pairs.append(load_pair(entry, manifest.path))
        except DataError as exc:
            problems.append(str(exc))
    return pairs, problems


def scale_volume(data: np.ndarray, scaling: str = "minmax") -> np.ndarray:
    """Per-volume intensity scaling; the paper scales input and target each to [0, 1]."""
    if scaling == "none":
        return data.astype(np.float32, copy=False)
    if scaling != "minmax":
        raise DataError(f"unknown scaling '{scaling}' (allowed: {', '.join(SCALINGS)})")
    lo, hi = float(data.min()), float(data.max())
    return ((data - lo) / (hi - lo)).astype(np.float32)


@dataclass(frozen=True)
class SiteData:
    """A site's validated, scaled volumes by split."""

    manifest: Manifest
    pairs: dict[str, list[SubjectPair]]
    scaling: str

    def arrays(self, split: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(subject id, scaled input, scaled target) for every subject of a split."""
        return [
            (p.entry.id, scale_volume(p.input.data, self.scaling), scale_volume(p.target.data, self.scaling))
            for p in self.pairs.get(split, [])
        ]


def load_site(
    manifest_path: str | Path, splits: Sequence[str] = SPLITS, scaling: str = "minmax"
) -> SiteData:
    """Load a site, validating every pair of the requested splits first.

    Raises one DataError listing every problem, so a site is fixed in one pass.
    """
    if scaling not in SCALINGS:
        raise DataError(f"unknown scaling '{scaling}' (allowed: {', '.join(SCALINGS)})")
    manifest = read_manifest(manifest_path)
    entries = manifest.split(*splits)
    pairs, problems = load_pairs(manifest, entries)
    if problems:
        head = f"{manifest.path}: {len(problems)} of {len(entries)} subjects are invalid"
        raise DataError("\n".join([head, *problems]) if len(problems) > 1 else problems[0])
    by_split = {name: [p for p in pairs if p.entry.split == name] for name in splits}
    return SiteData(manifest=manifest, pairs=by_split, scaling=scaling)
