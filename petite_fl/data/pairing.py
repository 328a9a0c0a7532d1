"""Frames → pair: a dynamic PET series becomes a short-scan input and a full-scan target (#16).

PETITE protocol (DESIGN.md §1): six 5-minute frames 30–60 min after injection; the input is
the first frame, the target the mean of all six. Here the input is the frames that cover the
first `input_minutes` from the first frame's start, the target the duration-weighted mean of
all frames (a plain mean when durations are equal), both float32 in Bq/mL.

`check_series` says what refuses a series (one line each, naming it) and what is only worth
reporting; frames on different grids are a reader's concern (one 4D array cannot hold them).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from petite_fl.data.dynamic import DynamicSeries

#: A frame is reported as moved when its normalised cross-correlation with frame 1 falls below
#: this fraction of the median over the later frames (both smoothed to 6 mm, inside the head).
#: Relative, because noise alone sets the absolute value: 0.5 between unmoved frames of the
#: noisiest synthetic scanner (scanner5), 0.96 on scanner1. Measured on the phantoms of
#: scanners 3–5 (two subjects each): unmoved frames stay within 0.965–1.026 of the median, one
#: frame shifted 4 mm drops to 0.89–0.94 (tests/test_import.py checks 6 mm on scanner5).
MOTION_NCC = 0.95
MOTION_SMOOTH_FWHM_MM = 6.0
#: Relative tolerance when comparing frame durations and the input window (header rounding).
TIME_TOLERANCE = 0.02


def input_frames(series: DynamicSeries, input_minutes: float = 5.0) -> tuple[list[int], str | None]:
    """Indices of the frames that make the input, and a note when they do not fill the window.

    Frames are taken in order while they end within the window (plus rounding tolerance).
    When the first frame alone is longer than the window it is used whole: a frame cannot be
    cut in time, so the input then carries more counts than `input_minutes` — said in the note.
    """
    window = input_minutes * 60.0
    t0 = float(series.frame_start[0])
    chosen = [k for k, (s, d) in enumerate(zip(series.frame_start, series.frame_duration, strict=True))
              if s + d - t0 <= window * (1 + TIME_TOLERANCE)]
    if not chosen:
        first = float(series.frame_duration[0])
        return [0], (f"{series.label}: the first frame lasts {first / 60:g} min, longer than the "
                     f"{input_minutes:g}-min input window; the input is that whole frame")
    covered = sum(float(series.frame_duration[k]) for k in chosen)
    if abs(covered - window) > window * TIME_TOLERANCE:
        return chosen, (f"{series.label}: frames {_frames(chosen)} cover {covered / 60:g} min of the "
                        f"{input_minutes:g}-min input window; the input is their duration-weighted mean")
    return chosen, None


def make_pair(series: DynamicSeries, input_minutes: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """(input, target) float32 volumes: the first `input_minutes` and the duration-weighted mean."""
    frames = series.frames if series.frames.ndim == 4 else series.frames[..., None]
    chosen, _ = input_frames(series, input_minutes)
    return (_weighted_mean(frames, series.frame_duration, chosen),
            _weighted_mean(frames, series.frame_duration, list(range(frames.shape[3]))))


def _weighted_mean(frames: np.ndarray, durations: list[float], idx: list[int]) -> np.ndarray:
    weights = np.asarray([float(durations[k]) for k in idx], dtype=np.float64)
    weights = weights / weights.sum()
    out = np.zeros(frames.shape[:3], dtype=np.float64)
    for k, w in zip(idx, weights, strict=True):
        out += w * frames[..., k]
    return out.astype(np.float32)


def check_series(
    series: DynamicSeries,
    expect_frames: int = 6,
    motion_threshold: float = MOTION_NCC,
    input_minutes: float = 5.0,
) -> tuple[list[str], list[str]]:
    """(problems, notes) for one series; each a single line that names it. Problems refuse it."""
    label = series.label
    problems, notes = list(series.problems), list(series.notes)
    n = series.n_frames
    if problems and n == 0:  # the reader could not read a frame: its lines say why, nothing else to check
        return problems, notes
    if len(series.frame_start) != n or len(series.frame_duration) != n:
        problems.append(f"{label}: {n} frames but {len(series.frame_start)} start and "
                        f"{len(series.frame_duration)} duration times in the header")
        return problems, notes
    modality = str(series.info.get("Modality") or "PT").upper()
    if modality not in ("PT", "PET"):
        problems.append(f"{label}: modality is '{modality}', not PET")
        return problems, notes
    if series.units != "Bq/mL":
        problems.append(f"{label}: units are '{series.units or 'not given'}', not Bq/mL "
                        "(activity concentration is required)")
    if series.decay_corrected is not True:
        state = "not given" if series.decay_corrected is None else "no"
        problems.append(f"{label}: decay correction is {state}; frames must be decay corrected "
                        "to be averaged")
    if n == 1:
        problems.append(f"{label}: a static series (one frame); a dynamic series of "
                        f"{expect_frames} frames is needed for an input/target pair")
        return problems, notes
    if n != expect_frames:
        kind = "missing" if n < expect_frames else "extra"
        problems.append(f"{label}: {n} frames, expected {expect_frames} ({kind} frames)")
    durations = [float(d) for d in series.frame_duration]
    if min(durations) <= 0:
        problems.append(f"{label}: frame durations {durations} s include a non-positive one")
        return problems, notes
    if max(durations) - min(durations) > TIME_TOLERANCE * max(durations):
        notes.append(f"{label}: unequal frame durations ({', '.join(f'{d / 60:g}' for d in durations)} min); "
                     "the target is weighted by duration")
    _, input_note = input_frames(series, input_minutes)
    if input_note:
        notes.append(input_note)
    moved = motion_frames(series, motion_threshold)
    if moved:
        notes.append(f"{label}: possible motion: frame(s) "
                     + ", ".join(f"{k + 1} (relative NCC {c:.3f})" for k, c in moved)
                     + f" correlate with frame 1 below {motion_threshold:g} of the other frames; "
                     "averaged as they are, review")
    return problems, notes


def motion_frames(series: DynamicSeries, threshold: float = MOTION_NCC) -> list[tuple[int, float]]:
    """(frame index, NCC with frame 1 relative to the median) for every frame below `threshold`.

    With fewer than three later frames there is no median to speak of: the NCC is used as is.
    """
    frames = series.frames
    if frames.ndim != 4 or frames.shape[3] < 2:
        return []
    zooms = np.linalg.norm(np.asarray(series.affine)[:3, :3], axis=0)
    sigma = [MOTION_SMOOTH_FWHM_MM / 2.3548 / max(float(z), 1e-6) for z in zooms]
    smooth = [gaussian_filter(frames[..., k].astype(np.float32), sigma) for k in range(frames.shape[3])]
    mean = np.mean(smooth, axis=0)
    mask = mean > 0.1 * float(mean.max()) if float(mean.max()) > 0 else np.ones(mean.shape, bool)
    ref = smooth[0][mask]
    ncc = [_ncc(ref, s[mask]) for s in smooth[1:]]
    typical = float(np.median(ncc)) if len(ncc) >= 3 else 1.0
    if typical <= 0:
        return [(k, 0.0) for k in range(1, len(smooth))]
    return [(k + 1, c / typical) for k, c in enumerate(ncc) if c / typical < threshold]


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def _frames(idx: list[int]) -> str:
    return ", ".join(str(k + 1) for k in idx)
