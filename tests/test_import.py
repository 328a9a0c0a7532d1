"""Frames → pair and `petite-data import` (#16): pairing math, each check's line, the import."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from petite_fl.data.dynamic import DynamicSeries
from petite_fl.data.pairing import check_series, make_pair

SHAPE = (20, 22, 18)


def _head(shift: int = 0) -> np.ndarray:
    """A smooth head-like blob with a hot off-centre spot (Bq/mL), shifted along x by `shift` voxels."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    cx, cy, cz = 10 + shift, 11, 9
    head = 8000.0 * (((x - cx) / 7) ** 2 + ((y - cy) / 8) ** 2 + ((z - cz) / 6) ** 2 < 1)
    spot = 20000.0 * np.exp(-(((x - cx - 3) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / 4.0))
    return (head + spot + 100.0).astype(np.float32)


def _series(frames: np.ndarray, durations: list[float] | None = None, **kw) -> DynamicSeries:
    n = frames.shape[3]
    durations = durations or [300.0] * n
    starts = list(np.cumsum([1800.0, *durations[:-1]]))
    args = dict(source=Path("/data/ADNI/002_S_0001/dyn"), fmt="nifti-bids", frames=frames,
                affine=np.diag([2.0, 2.0, 2.0, 1.0]), frame_start=[float(s) for s in starts],
                frame_duration=durations, units="Bq/mL", decay_corrected=True,
                identity={"PatientName": "DOE^JANE"})
    args.update(kw)
    return DynamicSeries(**args)


def _known_frames(n: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = _head()
    return np.stack([base * (1 + 0.05 * k) + rng.normal(0, 50, SHAPE).astype(np.float32)
                     for k in range(n)], axis=3).astype(np.float32)


def test_pair_input_is_frame_one_and_target_the_mean_of_six() -> None:
    frames = _known_frames()
    inp, tgt = make_pair(_series(frames))
    assert inp.dtype == tgt.dtype == np.float32
    np.testing.assert_allclose(inp, frames[..., 0], rtol=1e-6)
    np.testing.assert_allclose(tgt, frames.mean(axis=3), rtol=1e-5, atol=1e-2)


def test_pair_target_is_weighted_by_duration_and_unequal_durations_are_noted() -> None:
    frames = _known_frames()
    durations = [300.0, 300.0, 600.0, 300.0, 300.0, 120.0]
    series = _series(frames, durations)
    inp, tgt = make_pair(series)
    w = np.asarray(durations) / sum(durations)
    np.testing.assert_allclose(tgt, (frames * w).sum(axis=3), rtol=1e-5, atol=1e-2)
    np.testing.assert_allclose(inp, frames[..., 0], rtol=1e-6)
    problems, notes = check_series(series)
    assert problems == []
    assert any("unequal frame durations" in n and "weighted by duration" in n for n in notes)


def test_input_window_of_short_frames_is_their_weighted_mean_and_a_long_first_frame_is_used_whole() -> None:
    frames = _known_frames()
    # two 2.5-min frames fill the 5-min window: the input is their mean
    series = _series(frames, [150.0, 150.0, 300.0, 300.0, 300.0, 300.0])
    inp, _ = make_pair(series)
    np.testing.assert_allclose(inp, frames[..., :2].mean(axis=3), rtol=1e-5, atol=1e-2)
    # a 10-min first frame cannot be cut: it is the input, and the note says so
    series = _series(frames, [600.0, 300.0, 300.0, 300.0, 300.0, 300.0])
    inp, _ = make_pair(series)
    np.testing.assert_allclose(inp, frames[..., 0], rtol=1e-6)
    _, notes = check_series(series)
    assert any("longer than the 5-min input window" in n for n in notes)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"units": "counts"}, "units are 'counts', not Bq/mL"),
        ({"units": None}, "units are 'not given', not Bq/mL"),
        ({"decay_corrected": False}, "decay correction is no"),
        ({"decay_corrected": None}, "decay correction is not given"),
        ({"frames": _known_frames(1)}, "a static series (one frame)"),
        ({"frames": _known_frames(4)}, "4 frames, expected 6 (missing frames)"),
        ({"frames": _known_frames(8)}, "8 frames, expected 6 (extra frames)"),
    ],
)
def test_each_refusal_is_one_line_naming_the_series(change: dict, expected: str) -> None:
    frames = change.pop("frames", _known_frames())
    series = _series(frames, **change)
    problems, _ = check_series(series)
    assert len(problems) == 1, problems
    assert expected in problems[0]
    assert problems[0].startswith(series.label)
    assert "\n" not in problems[0]
    assert "DOE" not in problems[0]


def test_good_series_has_no_problem_and_no_motion_note() -> None:
    problems, notes = check_series(_series(_known_frames()))
    assert problems == [] and notes == []


def test_motion_between_frames_is_reported_naming_the_frame() -> None:
    frames = _known_frames()
    frames[..., 3] = _head(shift=4)  # frame 4: the head moved 8 mm
    problems, notes = check_series(_series(frames))
    assert problems == []
    motion = [n for n in notes if "possible motion" in n]
    assert len(motion) == 1 and "frame(s) 4 (NCC" in motion[0], notes
