"""Slice-position checks of a PET DICOM series: missing slices, uneven spacing, several bed positions (#16).

dcm2niix stacks whatever slices it is given (it only warns on stdout), so a lost file or a
second bed position would reach the pairing as a silently wrong grid. The positions are read
with pydicom, per frame, along the slice normal: ImagePositionPatient · (row × column cosines).
Hand-written because neither dcm2niix nor pydicom refuses such a series; it sorts nothing.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

#: a gap this many times the median spacing is a missing slice
GAP_FACTOR = 1.5
#: spacings spread over this fraction of the median are uneven
SPREAD = 0.01


def frame_key(ds: Any) -> tuple[str, str]:
    """Which frame a slice belongs to: its series and time slot (ImageIndex, else its times)."""
    series = str(ds.get("SeriesInstanceUID", ""))
    index, per_frame = ds.get("ImageIndex"), ds.get("NumberOfSlices")
    if index is not None and per_frame:
        return series, str((int(index) - 1) // int(per_frame))
    return series, f"{ds.get('FrameReferenceTime', '')}/{ds.get('AcquisitionTime', '')}"


def frame_positions(headers: list[Any]) -> dict[tuple[str, str], np.ndarray]:
    """Sorted slice positions (mm along the normal) of each frame; slices without geometry are left out."""
    positions: dict[tuple[str, str], list[float]] = defaultdict(list)
    for ds in headers:
        orient, where = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
        if orient is None or where is None or len(orient) != 6 or len(where) != 3:
            continue
        normal = np.cross(np.asarray(orient[:3], float), np.asarray(orient[3:], float))
        positions[frame_key(ds)].append(float(np.dot(np.asarray(where, float), normal)))
    return {key: np.sort(values) for key, values in positions.items()}


def slice_problems(label: str, headers: list[Any]) -> list[str]:
    """One line per kind of slice problem in the series called `label` (empty when sound)."""
    frames = frame_positions(headers)
    if not frames:
        return []
    problems: list[str] = []
    for z in frames.values():
        line = _spacing_problem(label, z)
        if line:
            problems.append(line)
            break
    problems += _bed_problems(label, list(frames.values()), reported=bool(problems))
    return problems


def _spacing_problem(label: str, z: np.ndarray) -> str | None:
    steps = np.diff(z)
    if len(steps) < 2:
        return None
    median = float(np.median(steps))
    if median <= 0:
        return f"{label}: several slices at one position (overlapping bed positions or a duplicated series?)"
    worst = int(np.argmax(steps))
    if steps[worst] > GAP_FACTOR * median:
        return (f"{label}: missing slice(s): a {steps[worst]:.4g} mm gap after the slice at {z[worst]:.4g} mm "
                f"(median spacing {median:.4g} mm)")
    if (steps.max() - steps.min()) > SPREAD * median:
        return (f"{label}: uneven slice spacing {steps.min():.4g}–{steps.max():.4g} mm "
                f"(over {SPREAD:.0%} of the median {median:.4g} mm)")
    return None


def _bed_problems(label: str, frames: list[np.ndarray], reported: bool) -> list[str]:
    """Frames that cover different axial ranges: several bed positions, or slices lost in some frames."""
    if len(frames) < 2:
        return []
    spacing = min((float(np.median(np.diff(z))) for z in frames if len(z) > 1), default=0.0)
    tol = max(0.5 * spacing, 1e-3)
    same_start = all(abs(z[0] - frames[0][0]) <= tol for z in frames)
    same_end = all(abs(z[-1] - frames[0][-1]) <= tol for z in frames)
    counts = sorted({len(z) for z in frames})
    if same_start and same_end and len(counts) == 1:
        return []
    if same_start or same_end:      # one end shared: the same bed, some slices lost
        return [] if reported else [f"{label}: missing slice(s): frames hold {counts[0]}–{counts[-1]} slices"]
    beds = len({round(float(z[0]) / tol) for z in frames})
    return [f"{label}: several bed positions: frames start at {beds} different axial positions "
            "(one bed position is needed)"]
