"""`petite-data check`: validate a site and summarise it before it trains or joins."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from petite_fl.data.manifest import read_manifest
from petite_fl.data.site import load_pairs
from petite_fl.errors import DataError


@dataclass
class SiteReport:
    """What a site holds and what is wrong with it."""

    manifest: Path
    site: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    rows: list[dict[str, object]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # legal but worth a look

    @property
    def ok(self) -> bool:
        return not self.problems


def check_site(manifest_path: str | Path) -> SiteReport:
    """Check every row of a manifest; never raises for data problems, it reports them."""
    report = SiteReport(manifest=Path(manifest_path).expanduser().resolve())
    try:
        manifest = read_manifest(report.manifest)
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    report.site = manifest.site
    report.counts = manifest.counts()
    pairs, report.problems = load_pairs(manifest, manifest.subjects, truth=True)  # a simulated site's truth too
    for pair in pairs:
        report.rows.append(
            {
                "id": pair.entry.id,
                "split": pair.entry.split,
                "shape": tuple(pair.input.data.shape),
                "voxel_mm": tuple(round(z, 4) for z in pair.input.zooms),
                "input_range": (float(pair.input.data.min()), float(pair.input.data.max())),
                "target_range": (float(pair.target.data.min()), float(pair.target.data.max())),
            }
        )
    geometries = {(r["shape"], r["voxel_mm"]) for r in report.rows}
    if len(geometries) > 1:
        report.notes.append(f"{len(geometries)} different voxel grids: usually an export mistake")
    if any(pair.truth is not None for pair in pairs):
        report.notes.append("rows carry 'truth' (and 'regions'): a simulated site; evaluation also scores against them")
    if report.counts.get("train", 0) == 0:
        report.notes.append("no 'train' subjects: this site can evaluate but not fine-tune")
    return report
