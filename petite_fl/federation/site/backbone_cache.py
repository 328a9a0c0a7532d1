"""A site's cache of frozen backbones, keyed by SHA-256.

The server sends a backbone only to sites that do not hold it: a site reports the hashes
it has (`held`), and stores what it receives only after checking that the content hashes
to what the server announced (`store`). Files are written atomically.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from petite_fl.artifacts import load_backbone, save_backbone
from petite_fl.errors import PetiteError
from petite_fl.models.base import Backbone

_SHA = re.compile(r"[0-9a-f]{64}")


class BackboneCache:
    """Backbone files in one folder, named by their SHA-256."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not _SHA.fullmatch(sha256):
            raise PetiteError(f"'{sha256}' is not a SHA-256 hex digest")
        return self.folder / f"{sha256}.safetensors"

    def held(self) -> list[str]:
        """Hashes of the backbones this site holds (what it reports to the server)."""
        return sorted(p.stem for p in self.folder.glob("*.safetensors") if _SHA.fullmatch(p.stem))

    def __contains__(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def store(self, model: Backbone, expected_sha256: str, provenance: dict | None = None) -> Path:
        """Keep a received backbone, refusing it if its content does not hash as announced."""
        target = self.path(expected_sha256)
        # A name of its own: two deliveries of the same backbone (a resumed run, two processes) never share one.
        fd, name = tempfile.mkstemp(prefix=f".incoming-{expected_sha256[:12]}-", suffix=".safetensors", dir=self.folder)
        os.close(fd)
        tmp = Path(name)
        try:
            meta = save_backbone(model, tmp, provenance)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if meta["sha256"] != expected_sha256:
            tmp.unlink(missing_ok=True)
            raise PetiteError(f"received backbone hashes to {meta['sha256'][:12]}…, "
                              f"not the announced {expected_sha256[:12]}…: refused")
        tmp.replace(target)
        return target

    def load(self, sha256: str, device: str | torch.device = "cpu") -> tuple[Backbone, dict]:
        path = self.path(sha256)
        if not path.is_file():
            raise PetiteError(f"backbone {sha256[:12]}… is not in the cache at {self.folder}")
        model, meta = load_backbone(path, device)  # its content checked against the hash it records
        if meta["sha256"] != sha256:  # … and that hash against the one asked for (a file put under another name)
            raise PetiteError(f"the cached file for backbone {sha256[:12]}… holds backbone {meta['sha256'][:12]}…: "
                              "refused; delete it and let the server send the backbone again")
        return model, meta
