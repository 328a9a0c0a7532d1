"""A checkpoint is a pickle: one that runs code when it is loaded must not run (threat model, server/README §8)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from petite_fl.errors import PetiteError
from petite_fl.federation.server.checkpoint import load_checkpoint


class _Payload:
    """Unpickling this calls os.mkdir(marker): what a hostile checkpoint would do with os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def _hostile(path: Path, marker: Path) -> Path:
    torch.save({"round": 1, "global": {}, "evil": _Payload(marker)}, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    return path


def test_a_pickled_checkpoint_that_runs_code_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = _hostile(tmp_path / "checkpoint.pt", marker)
    with pytest.raises(PetiteError, match=r"checkpoint.pt: not a readable petite-fl checkpoint \(UnpicklingError\)"):
        load_checkpoint(path, "sha", ["a"])
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the control: the file does run code when loaded unchecked
    assert marker.is_dir()


def test_a_training_checkpoint_that_runs_code_never_runs_it(tmp_path):
    from petite_fl.training.trainer import _restore

    marker = tmp_path / "ran"
    path = _hostile(tmp_path / "train.pt", marker)
    with pytest.raises(pickle.UnpicklingError):
        _restore(path, None, None, None, None, None)
    assert not marker.exists()
