"""A site's backbone cache: keyed by hash, verified on arrival, nothing resent when held."""

from __future__ import annotations

import pytest
import torch

from petite_fl.artifacts import save_backbone
from petite_fl.errors import PetiteError
from petite_fl.federation.site.backbone_cache import BackboneCache
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


def test_a_cached_file_under_another_backbones_name_is_refused(tmp_path):
    """A file that is a valid backbone, but not the one its name promises, is not used."""
    import shutil

    torch.manual_seed(0)
    a = build_backbone("unetr", "tiny")
    torch.manual_seed(1)
    b = build_backbone("unetr", "tiny")
    cache = BackboneCache(tmp_path)
    path_a = cache.store(a, save_backbone(a, tmp_path / "a.safetensors")["sha256"])
    sha_b = save_backbone(b, tmp_path / "b.safetensors")["sha256"]
    shutil.copy(path_a, cache.path(sha_b))
    with pytest.raises(PetiteError, match="holds backbone"):
        cache.load(sha_b)
    assert not list(tmp_path.glob(".incoming-*"))
