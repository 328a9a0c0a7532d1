"""Sites held in memory (`data.cache`): read once per process, read again when a file changes."""

from __future__ import annotations

import os

import numpy as np

from petite_fl.config import compose
from petite_fl.data import cache
from petite_fl.data.sites import site_split
from tests.conftest import smooth_volume, write_nifti


def test_a_site_is_read_once_and_again_when_one_of_its_files_changes(small_site):
    cache.clear()
    cfg = compose()
    first, _ = site_split(cfg, small_site, "train", None)
    again, _ = site_split(cfg, small_site, "train", None)
    assert again is first  # held: no second read
    other, _ = site_split(cfg, small_site, "test", None)
    assert other is not first and list(other.pairs) == ["test"]
    pair = first.pairs["train"][0]
    before = os.stat(pair.entry.input).st_mtime_ns
    write_nifti(pair.entry.input, 3 * smooth_volume(7))  # the site replaces a scan …
    os.utime(pair.entry.input, ns=(before + 10**9, before + 10**9))  # … a second later (coarse file clocks)
    changed, _ = site_split(cfg, small_site, "train", None)
    assert changed is not first
    assert np.allclose(changed.pairs["train"][0].input.data, 3 * smooth_volume(7), rtol=1e-3)
    cache.clear()
