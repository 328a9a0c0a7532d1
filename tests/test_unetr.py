"""UNETR: MONAI's network, paper size, and a position embedding that follows the patch size."""

from __future__ import annotations

import pytest
import torch

from petite_fl.models.registry import build_backbone


def test_paper_preset_has_the_papers_parameter_count():
    with torch.device("meta"):
        model = build_backbone("unetr", "paper")
    total = sum(p.numel() for p in model.parameters())
    vit = sum(p.numel() for p in model.unetr.vit.parameters())
    assert total == pytest.approx(101.7e6, rel=0.01)
    assert vit == pytest.approx(88.2e6, rel=0.01)


def test_at_its_own_patch_size_it_computes_what_monai_computes():
    torch.manual_seed(0)
    model = build_backbone("unetr", "tiny", residual=False).eval()
    x = torch.rand(1, 1, 48, 48, 48)
    torch.testing.assert_close(model(x), model.unetr(x))


def test_another_patch_size_uses_the_interpolated_position_embedding():
    # Scanner 5's windows are shallower (48×48×32 in the tiny preset): the learned embedding is resized, not dropped.
    torch.manual_seed(0)
    model = build_backbone("unetr", "tiny", residual=False).eval()
    x = torch.rand(1, 1, 48, 48, 32)
    before = model(x)
    assert before.shape == x.shape
    with torch.no_grad():
        model.unetr.vit.patch_embedding.position_embeddings.add_(1.0)
    assert not torch.allclose(model(x), before)
    grid = model._position_embedding((3, 3, 2))
    assert grid.shape == (1, 18, 96)


def test_the_tiny_preset_starts_at_the_identity():
    model = build_backbone("unetr", "tiny").eval()
    x = torch.rand(1, 1, 32, 32, 16)
    torch.testing.assert_close(model(x), x)


def test_sizes_that_are_not_multiples_of_the_patch_are_refused():
    with pytest.raises(ValueError, match="multiple of 16"):
        build_backbone("unetr", "tiny")(torch.rand(1, 1, 32, 32, 20))
