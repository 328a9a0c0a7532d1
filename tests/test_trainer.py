"""The training loop resumes from its last checkpoint and schedules the learning rate."""

from __future__ import annotations

import pytest
import torch

from petite_fl.config import compose
from petite_fl.data.patches import patch_dataset
from petite_fl.models.registry import build_backbone
from petite_fl.training.objectives import Supervised
from petite_fl.training.schedule import cosine_with_warmup
from petite_fl.training.trainer import train
from tests.conftest import smooth_volume


def _data():
    vols = [(f"s{i}", smooth_volume(i, (32, 32, 32)) / 1000, smooth_volume(i + 9, (32, 32, 32)) / 1000)
            for i in range(2)]
    return patch_dataset(vols, (32, 32, 16), patches_per_volume=1, seed=0)


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    cfg = compose(overrides=["train=tiny", "train.checkpoint_every=2", "train.batch_size=1"]).train
    ckpt = tmp_path / "run.ckpt"
    torch.manual_seed(0)
    model = build_backbone("unetr", "tiny")
    first = train(model, _data(), Supervised(), steps=4, lr=1e-3, train_cfg=cfg, device=torch.device("cpu"),
                  amp=False, checkpoint=ckpt, quiet=True)
    assert first.resumed_from == 0 and ckpt.is_file()
    saved = torch.load(ckpt, weights_only=False)
    assert saved["step"] == 4 and len(saved["history"]) == 4
    # A new process would rebuild the model from scratch and find the checkpoint.
    fresh = build_backbone("unetr", "tiny")
    second = train(fresh, _data(), Supervised(), steps=6, lr=1e-3, train_cfg=cfg, device=torch.device("cpu"),
                   amp=False, checkpoint=ckpt, quiet=True)
    assert second.resumed_from == 4 and len(second.history) == 6
    assert torch.load(ckpt, weights_only=False)["step"] == 6


def test_warmup_then_cosine_decay_to_zero():
    f = cosine_with_warmup(10, 110)
    assert f(0) == 0.1 and f(9) == 1.0
    assert f(60) == pytest.approx(0.5)  # half-way through the cosine
    assert f(110) == pytest.approx(0.0)
