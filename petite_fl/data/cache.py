"""Sites held in memory for the life of a process: a site answers every round of a run from memory.

In Flower's simulation engine one process (an actor) answers many messages for the same
sites: the rounds, arms and seeds of a comparison. Reading a site's NIfTI files and
computing its scaling cost more than its round's steps (scanner1 of the default data: about
5 s against 2 s of steps on 2 cores), so `load_cached` keeps what `data.site.load_site` made,
with the maps and masks it computes on demand.

A site is read again when any of its files changes: the key holds the manifest's and every
image's (size, mtime, inode). Held sites are bounded by MAX_BYTES, least recently used first
out. `functools.lru_cache` cannot be used: it bounds entries, not bytes, and would keep a
site whose files have changed.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from petite_fl.data.manifest import read_manifest
from petite_fl.data.site import SiteData, load_site

#: bytes of volumes a process holds at most (default 4 GiB; PETITE_FL_DATA_CACHE_MB: 0 turns it off)
MAX_BYTES = int(float(os.environ.get("PETITE_FL_DATA_CACHE_MB", 4096)) * 2**20)

_HELD: OrderedDict[tuple, SiteData] = OrderedDict()


def _stamp(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


def _key(manifest_path: Path, splits: Sequence[str], scaling: str, truth: bool) -> tuple:
    manifest = read_manifest(manifest_path)
    files = []
    for entry in manifest.split(*splits):
        for path in (entry.input, entry.target, *((entry.truth, entry.regions) if truth else ())):
            try:
                files.append(_stamp(Path(path)) if path is not None else None)
            except OSError:  # a missing file: never held, load_site names it
                return ()
    return (str(Path(manifest_path).resolve()), _stamp(Path(manifest_path)), tuple(splits), scaling, truth,
            tuple(files))


def load_cached(manifest_path: str | Path, splits: Sequence[str], scaling: str, truth: bool = False) -> SiteData:
    """`load_site(manifest_path, splits, scaling, truth)`, from memory when its files are unchanged."""
    key = _key(Path(manifest_path), splits, scaling, truth) if MAX_BYTES > 0 else ()
    if key and key in _HELD:
        _HELD.move_to_end(key)
        return _HELD[key]
    site = load_site(manifest_path, splits=splits, scaling=scaling, truth=truth)
    if key:
        stale = [k for k in _HELD if k[0] == key[0] and k[2:5] == key[2:5]]  # the same split, older files
        for k in stale:
            del _HELD[k]
        _HELD[key] = site
        while len(_HELD) > 1 and sum(s.nbytes for s in _HELD.values()) > MAX_BYTES:
            _HELD.popitem(last=False)
    return site


def clear() -> None:
    """Forget every held site (tests; a process that needs the memory back)."""
    _HELD.clear()
