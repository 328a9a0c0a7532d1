"""Which scanner profile an imported series belongs to (#16): a registered one, or a drafted YAML.

A site's data must name a scanner (`configs/scanner/*.yaml`, `petite_fl.scanners`): the
geometry the models and patches are sized for. A series whose matrix equals a registered
scanner's and whose voxel size is within `VOXEL_TOLERANCE` of it is that scanner. Otherwise
the header gives the geometry and vendor of a new profile, and what no header records
(resolution, count level, noise texture) gets a conservative placeholder marked
`# review:` for the user, who copies the file into a config folder to register it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from petite_fl.data.dynamic import DynamicSeries
from petite_fl.data.provenance import OTHER, public_header
from petite_fl.scanners import available_scanners, get_scanner

#: relative voxel-size difference per axis still taken as the same scanner (header rounding, 2 %)
VOXEL_TOLERANCE = 0.02
#: edge of the training patch, as in the registered scanners (UNETR needs multiples of 16)
PATCH_EDGE = 64


@dataclass(frozen=True)
class Profile:
    """The scanner of an imported series: `scanner` when registered, else `draft` YAML to review."""

    scanner: str | None
    text: str        # the scanner YAML the importer writes next to the manifest (scanner.yaml)
    reason: str      # one line: what matched, or why a draft was needed

    @property
    def drafted(self) -> bool:
        return self.scanner is None


def series_geometry(series: DynamicSeries) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Matrix and voxel size (mm) of the series in its RAS+ voxel order."""
    matrix = tuple(int(n) for n in series.frames.shape[:3])
    voxel = tuple(float(z) for z in np.linalg.norm(np.asarray(series.affine)[:3, :3], axis=0))
    return matrix, voxel  # type: ignore[return-value]


def scanner_profile(series: DynamicSeries, name: str | None = None) -> Profile:
    """The registered scanner matching the series' grid, or a drafted profile called `name`."""
    matrix, voxel = series_geometry(series)
    for candidate in available_scanners():
        scanner = get_scanner(candidate)
        if scanner.matrix == matrix and np.allclose(voxel, scanner.voxel_mm, rtol=VOXEL_TOLERANCE, atol=0):
            reason = (f"{series.label}: matrix {list(matrix)} and voxel {_mm(voxel)} mm match "
                      f"{candidate} (voxel within {VOXEL_TOLERANCE:.0%})")
            return Profile(candidate, Path(scanner.source).read_text(), reason)
    name = name or draft_name(series)
    reason = (f"{series.label}: matrix {list(matrix)}, voxel {_mm(voxel)} mm match no registered scanner "
              f"({', '.join(available_scanners())}); drafted '{name}' for review")
    return Profile(None, draft_yaml(series, name), reason)


def draft_name(series: DynamicSeries) -> str:
    """A file-name-safe name from the vendor and model as the vocabulary names them, e.g. `siemens-hr`."""
    header = public_header(series.info)
    parts = [v for v in (header["Manufacturer"], header["ManufacturersModelName"]) if v and v != OTHER]
    slug = re.sub(r"[^a-z0-9]+", "-", " ".join(parts).lower()).strip("-")
    return slug or "imported-scanner"


def draft_yaml(series: DynamicSeries, name: str) -> str:
    """A scanner YAML from the header; every field the header cannot give is marked `# review:`."""
    matrix, voxel = series_geometry(series)
    header = public_header(series.info)  # the header's free text stays in the site's private mapping
    vendor = header["Manufacturer"] or "unknown"
    model = header["ManufacturersModelName"]
    model_note = json.dumps(model) if model else "not in petite's list (the header's text: private/pseudonyms.json)"
    recon = header["ReconMethodName"] or "unknown"
    patch = [_patch_edge(n) for n in matrix]
    # resolution no finer than 2 voxels nor than a clinical ~5 mm: the safe side for synthetic blur
    fwhm = [round(max(5.0, 2.0 * v), 2) for v in voxel]
    ramp = 1.0 if recon == "FBP" else 0.6
    return "\n".join([
        f"# Drafted by `petite-data import` from the header of a {series.fmt} series of this site "
        "(its path stays in the site's private mapping).",
        "# Copy into a config folder as <name>.yaml (see README, adding a scanner) after the `# review:` lines.",
        f"name: {name}",
        f"vendor: {json.dumps(vendor)}  # model: {model_note}",
        "site: imported  # review: the site (hospital) that owns this scanner",
        f"matrix: {json.dumps(list(matrix))}",
        f"voxel_mm: {json.dumps([round(v, 6) for v in voxel])}",
        f"patch: {json.dumps(patch)}  # review: training patch, at most {PATCH_EDGE} and the matrix per axis",
        "acquisition:",
        f"  fwhm_mm: {json.dumps(fwhm)}  # review: reconstructed resolution, not in the header (placeholder)",
        "  counts_per_voxel: 15  # review: noise level of one 5-min frame, not in the header (placeholder)",
        "  recon:",
        f"    algorithm: {json.dumps(recon)}",
        f"    noise_ramp: {ramp}  # review: 1 for FBP, ~0.5 for iterative with PSF (guessed from the algorithm)",
        "rationale:",
        "  drafted: geometry from the image header, vendor and recon mapped to petite's lists; acquisition values "
        "are placeholders",
        "",
    ])


def _patch_edge(n: int) -> int:
    edge = min(PATCH_EDGE, n)
    return edge - edge % 16 if edge >= 16 else edge


def _mm(voxel: tuple[float, ...]) -> str:
    return "×".join(f"{v:.4g}" for v in voxel)
