"""The scaling-spread experiment: k, the short scan's and the noise-free image's head-mask PSNR per subject."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from petite_fl.data.scalings import get_scaling
from petite_fl.data.synthetic import synthesize_subject
from petite_fl.experiments.scaling_spread import markdown, measure, summary
from petite_fl.metrics import foreground_mask, psnr
from petite_fl.scanners import get_scanner
from tests.conftest import small_spec


def test_one_factor_leaves_no_k_and_its_oracle_is_the_noise_free_image_against_the_target(tmp_path):
    spec = small_spec(subjects=3, splits=(("train", 3), ("val", 0), ("test", 0)))
    rows = measure(spec, ["scanner5"], ["grey-matter", "minmax"], tmp_path)
    assert (tmp_path / "subjects.csv").is_file() and len(rows) == 6
    one = [r for r in rows if r["scaling"] == "grey-matter"]
    paper = [r for r in rows if r["scaling"] == "minmax"]
    assert all(r["k"] == 1.0 for r in one) and all(r["k"] > 1.1 for r in paper)  # the noisiest voxel's k
    assert len({round(r["k"], 6) for r in paper}) == 3  # a different k for every subject
    # with one factor the oracle is the noise-free image in the target's units, exactly
    scan = synthesize_subject(get_scanner("scanner5"), 0, spec)
    x_map = get_scaling("grey-matter").of_input(scan.input, get_scanner("scanner5").voxel_mm)
    y = torch.as_tensor(x_map.apply(scan.target))
    mask = foreground_mask(y)
    assert one[0]["oracle"] == pytest.approx(float(psnr(torch.as_tensor(x_map.apply(scan.noise_free)), y, mask)),
                                             abs=1e-4)
    assert one[0]["short"] == pytest.approx(float(psnr(torch.as_tensor(x_map.apply(scan.input)), y, mask)), abs=1e-6)
    table = summary(rows)
    assert [(r["scanner"], r["scaling"]) for r in table] == [("scanner5", "grey-matter"), ("scanner5", "minmax")]
    assert table[0]["k_sd"] == 0.0 and table[1]["k_sd"] > 0.0
    assert np.isfinite([r[k] for r in table for k in ("short_sd", "oracle_sd", "gm")]).all()
    assert markdown(table).count("\n| scanner5 |") == 2
