"""A site's backbone cache: keyed by hash, verified on arrival, nothing resent when held."""

from __future__ import annotations

import pytest
import torch

from petite_fl.artifacts import save_backbone
from petite_fl.errors import PetiteError
from petite_fl.federation.backbone_cache import BackboneCache
from petite_fl.models.registry import build_backbone


def test_a_received_backbone_is_kept_under_its_hash_and_reported(tmp_path):
    torch.manual_seed(0)
    model = build_backbone("unetr", "tiny")
    sha = save_backbone(model, tmp_path / "server.safetensors")["sha256"]
    cache = BackboneCache(tmp_path / "site")
    assert cache.held() == [] and sha not in cache
    cache.store(model, sha)
    assert cache.held() == [sha] and sha in cache
    loaded, meta = cache.load(sha)
    assert meta["sha256"] == sha
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_backbone_that_does_not_hash_as_announced_is_refused(tmp_path):
    model = build_backbone("unetr", "tiny")
    cache = BackboneCache(tmp_path)
    with pytest.raises(PetiteError, match="not the announced"):
        cache.store(model, "0" * 64)
    assert cache.held() == [] and not list(tmp_path.glob(".incoming-*"))


def test_bad_hashes_and_missing_backbones_are_clear_errors(tmp_path):
    cache = BackboneCache(tmp_path)
    with pytest.raises(PetiteError, match="not a SHA-256"):
        cache.path("../../etc/passwd")
    with pytest.raises(PetiteError, match="not in the cache"):
        cache.load("a" * 64)
