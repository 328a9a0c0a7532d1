"""A site's data: validated NIfTI pairs, scaled, as patches or whole volumes.

Every scaling goes through the registry (`data.scalings`): the input's map comes from the
input alone, the target's and the truth's from the scaling's rule (one factor for all of
them by default). The noise-free truth and the region labels (simulation only) are loaded
only when asked for (`truth=True`, evaluation), so that training cannot read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from petite_fl.data.manifest import SPLITS, Manifest, SubjectEntry, read_manifest
from petite_fl.data.nifti import Volume, check_pair, load_volume
from petite_fl.data.scalings import Intensity, Scaling, get_scaling
from petite_fl.errors import DataError

#: the labels of a `regions` image: the measured regions and the reference region
MEASURED, REFERENCE = 1, 2


@dataclass(frozen=True)
class SubjectPair:
    """One subject's input and target on one RAS+ grid, as loaded (not yet scaled), and, when
    loaded for evaluation of a simulated site, its noise-free truth and region labels."""

    entry: SubjectEntry
    input: Volume
    target: Volume
    truth: Volume | None = None
    regions: Volume | None = None

    @property
    def affine(self) -> np.ndarray:
        return self.input.affine


@dataclass(frozen=True)
class ScaledSubject:
    """One subject in the network's units: what evaluation scores a prediction against.

    `intensity` is the input's map: `intensity.invert` brings a prediction back to the
    input's units. `regions` holds integer labels (not scaled)."""

    id: str
    input: np.ndarray
    target: np.ndarray
    intensity: Intensity
    truth: np.ndarray | None = None
    regions: np.ndarray | None = None


def check_regions(volume: Volume, where: str) -> None:
    """Whole-number labels 0, 1 and 2, with both regions present."""
    labels = np.unique(volume.data)
    if not np.all(np.isin(labels, (0, MEASURED, REFERENCE))):
        raise DataError(f"{where} regions: labels must be 0, {MEASURED} and {REFERENCE}, found "
                        f"{', '.join(f'{v:g}' for v in labels[:6])}{', …' if len(labels) > 6 else ''}")
    missing = [str(k) for k in (MEASURED, REFERENCE) if k not in labels]
    if missing:
        raise DataError(f"{where} regions: no voxel labelled {' or '.join(missing)} (1 = measured regions, "
                        "2 = reference region)")


def load_pair(entry: SubjectEntry, manifest_path: Path, truth: bool = False) -> SubjectPair:
    """Load and validate one manifest row; errors name the manifest row and file.

    `truth`: also its `truth` and `regions` files when the row has them (evaluation only)."""
    where = entry.where(manifest_path)
    pair = SubjectPair(entry=entry, input=load_volume(entry.input, what=f"{where} input"),
                       target=load_volume(entry.target, what=f"{where} target"))
    check_pair(pair.input, pair.target, where)
    if not truth or entry.truth is None:
        return pair
    extra = {"truth": load_volume(entry.truth, what=f"{where} truth")}
    if entry.regions is not None:
        extra["regions"] = load_volume(entry.regions, what=f"{where} regions")
    for name, volume in extra.items():
        check_pair(pair.input, volume, where, name)
    if "regions" in extra:
        check_regions(extra["regions"], where)
    return SubjectPair(entry=entry, input=pair.input, target=pair.target, **extra)


def load_pairs(manifest: Manifest, entries: Sequence[SubjectEntry], truth: bool = False
               ) -> tuple[list[SubjectPair], list[str]]:
    """Every valid pair, and one problem line per invalid one (nothing raised)."""
    pairs, problems = _load_pairs(manifest, entries, truth)
    return pairs, [text for _, text in problems]


def _load_pairs(manifest: Manifest, entries: Sequence[SubjectEntry], truth: bool
                ) -> tuple[list[SubjectPair], list[tuple[int, str]]]:
    pairs, problems = [], []
    for entry in entries:
        try:
            pairs.append(load_pair(entry, manifest.path, truth))
        except DataError as exc:
            problems.append((entry.row, str(exc)))
    return pairs, problems


@dataclass(frozen=True)
class SiteData:
    """A site's validated volumes by split, scaled on demand by `scaling` (a registered name)."""

    manifest: Manifest
    pairs: dict[str, list[SubjectPair]]
    scaling: str
    _maps: dict[str, tuple[Intensity, Intensity]] = field(default_factory=dict, repr=False, compare=False)
    _memo: dict[tuple, object] = field(default_factory=dict, repr=False, compare=False)  # arrays, masks

    @property
    def scaler(self) -> Scaling:
        return get_scaling(self.scaling)

    def maps(self, pair: SubjectPair) -> tuple[Intensity, Intensity]:
        """(input map, target map) of a subject, computed once (a factor may cost a smoothing)."""
        key = pair.entry.id
        if key not in self._maps:
            scaler = self.scaler
            x_map = scaler.of_input(pair.input.data, pair.input.zooms)
            self._maps[key] = (x_map, scaler.of_target(pair.target.data, x_map))
        return self._maps[key]

    def arrays(self, split: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(subject id, scaled input, scaled target) for every subject of a split, computed once (a held
        site answers every round's validation from them). Read-only by convention: callers copy to change."""
        key = ("arrays", split)
        if key not in self._memo:
            out = []
            for p in self.pairs.get(split, []):
                x_map, y_map = self.maps(p)
                out.append((p.entry.id, x_map.apply(p.input.data), y_map.apply(p.target.data)))
            self._memo[key] = out
        return list(self._memo[key])

    def foreground(self, pair: SubjectPair, threshold: float) -> np.ndarray:
        """The scaled target above `threshold` × its maximum (patch sampling's mask), computed once."""
        key = ("foreground", pair.entry.id, float(threshold))
        if key not in self._memo:
            y = self.maps(pair)[1].apply(pair.target.data)
            self._memo[key] = y > threshold * float(y.max())
        return self._memo[key]

    @property
    def nbytes(self) -> int:
        """Bytes of the volumes held, loaded and computed (`data.cache` bounds the sites a process holds)."""
        held = [v.data for ps in self.pairs.values() for p in ps for v in (p.input, p.target, p.truth, p.regions)
                if v is not None]
        for value in self._memo.values():
            held += [value] if isinstance(value, np.ndarray) else [a for row in value for a in row[1:]]
        return sum(a.nbytes for a in held)

    def subjects(self, split: str) -> list[ScaledSubject]:
        """Every subject of a split scaled for evaluation, with its truth (the target's map) and
        region labels where they were loaded."""
        out = []
        for p in self.pairs.get(split, []):
            x_map, y_map = self.maps(p)
            out.append(ScaledSubject(
                id=p.entry.id, input=x_map.apply(p.input.data), target=y_map.apply(p.target.data), intensity=x_map,
                truth=None if p.truth is None else y_map.apply(p.truth.data),
                regions=None if p.regions is None else np.rint(p.regions.data).astype(np.int16)))
        return out


def load_site(manifest_path: str | Path, splits: Sequence[str] = SPLITS, scaling: str = "grey-matter",
              truth: bool = False) -> SiteData:
    """Load a site, validating every pair of the requested splits first.

    `truth`: also the rows' `truth` and `regions` (simulation only; evaluation, never training).
    Raises one DataError listing every problem, so a site is fixed in one pass; an unknown
    scaling is one ConfigError naming `data.loader.scaling`.
    """
    get_scaling(scaling)
    manifest = read_manifest(manifest_path)
    entries = manifest.split(*splits)
    pairs, problems = _load_pairs(manifest, entries, truth)
    if problems:
        head = f"{manifest.path}: {len(problems)} of {len(entries)} subjects are invalid"
        lines = [text for _, text in problems]
        raise DataError("\n".join([head, *lines]) if len(lines) > 1 else lines[0], rows=[r for r, _ in problems])
    by_split = {name: [p for p in pairs if p.entry.split == name] for name in splits}
    return SiteData(manifest=manifest, pairs=by_split, scaling=scaling)
