"""Where a site keeps its things under its root: `<root>/<site>/` (backbone cache, and per run
its settings, personal state, adapter and curves). A module of its own, without torch or MONAI,
so that listing a site's adapters does not import a network library."""

from __future__ import annotations

import re
from pathlib import Path

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def folder_name(name: str) -> str:
    """A name as one folder name: never a separator, never '.' or '..' (a site may be a manifest path)."""
    safe = _SAFE.sub("_", name)
    return safe.replace(".", "_") if set(safe) <= {"."} else safe


def site_dir(site_root: Path, site: str) -> Path:
    """A site's own folder under its root (backbone cache, per-run state)."""
    return Path(site_root) / folder_name(site)


def cached_backbone(site_root: Path, site: str, sha256: str) -> Path:
    """A backbone in a site's cache (`federation.backbone_cache.BackboneCache`, named by its SHA-256)."""
    return site_dir(site_root, site) / "backbones" / f"{sha256}.safetensors"


def run_folder(site_root: Path, site: str, run_name: str) -> Path:
    """Where a site keeps one run's settings and personal state."""
    return site_dir(site_root, site) / "runs" / folder_name(run_name)
