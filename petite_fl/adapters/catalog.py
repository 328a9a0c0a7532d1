"""The adapters a site holds: `<site_root>/<site>/runs/<run>/adapter.safetensors`, with their cards.

Only each file's metadata is read (safetensors keeps it in the header), so listing a site's
adapters costs milliseconds whatever their size. A file written before adapters carried a
card is listed with what its metadata has, and its modification time as its date.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from petite_fl.artifacts import KEY
from petite_fl.errors import PetiteError
from petite_fl.federation.site.paths import folder_name, site_dir

ADAPTER = "adapter.safetensors"


@dataclass(frozen=True)
class AdapterEntry:
    path: Path
    site: str
    run: str
    strategy: str | None
    peft: str
    rounds: int | None
    backbone_sha256: str
    created: str                 # ISO 8601, UTC
    training_scans: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def card(self) -> dict[str, Any]:
        return dict(self.meta.get("card") or {})


def read_header(path: Path, kind: str) -> dict[str, Any]:
    """A petite-fl file's metadata (`kind`: adapter or backbone), without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get(KEY, "null"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise PetiteError(f"{path}: not a readable {kind} file ({exc})") from None
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        raise PetiteError(f"{path}: not a petite-fl {kind} file (no '{kind}' metadata)")
    return meta


def read_meta(path: Path) -> dict[str, Any]:
    """An adapter file's petite-fl metadata, without reading its tensors."""
    return read_header(path, "adapter")


def _label(peft: Any) -> str:
    if isinstance(peft, dict):
        from petite_fl.peft.spec import PeftSpec

        try:
            return PeftSpec.from_dict(peft).label
        except Exception:  # an unknown method of a newer petite-fl: its kind still says something
            return str(peft.get("kind", "?"))
    return str(peft)


def entry(path: Path, site: str | None = None) -> AdapterEntry:
    meta = read_meta(path)
    card = meta.get("card") or {}
    created = card.get("created") or dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    return AdapterEntry(path=path, site=str(card.get("site") or meta.get("site") or site or meta.get("target", "?")),
                        run=str(card.get("run") or meta.get("run") or path.parent.name),
                        strategy=card.get("strategy") or meta.get("strategy"),
                        peft=str(card.get("peft") or _label(meta.get("peft"))),
                        rounds=card.get("rounds", meta.get("rounds")),
                        backbone_sha256=str(meta["backbone_sha256"]), created=str(created),
                        training_scans=card.get("training_scans"), metrics=dict(card.get("metrics") or {}),
                        meta=meta)


def site_names(site_root: Path) -> list[str]:
    """Sites with a folder under the root (simulated or deployed on this machine)."""
    root = Path(site_root).expanduser()
    return sorted(p.name for p in root.iterdir() if (p / "runs").is_dir()) if root.is_dir() else []


def scan(site_root: Path, site: str | None = None) -> tuple[list[AdapterEntry], list[Path]]:
    """(every adapter of one site, or of every site under the root, oldest first; the adapter
    files whose header cannot be read), each header read once."""
    root = Path(site_root).expanduser()
    out, bad = [], []
    for name in [site] if site else site_names(root):
        for path in sorted((site_dir(root, name) / "runs").glob(f"*/{ADAPTER}")):
            try:
                out.append(entry(path, name))
            except PetiteError:
                bad.append(path)
    # `created` has whole seconds: two runs finished in one second are ordered by their files' times
    return sorted(out, key=lambda e: (e.created, e.path.stat().st_mtime_ns, str(e.path))), bad


def site_adapters(site_root: Path, site: str | None = None) -> list[AdapterEntry]:
    """Every readable adapter, oldest first (an unreadable file is skipped: the listing names it, `pick` refuses it)."""
    return scan(site_root, site)[0]


def pick(site_root: Path, site: str, run: str = "latest") -> AdapterEntry:
    """A site's adapter of run `run` (`latest`: the most recently finished)."""
    root = Path(site_root).expanduser()
    folder = site_dir(root, site)
    if not folder.is_dir():
        held = ", ".join(site_names(root)) or "none"
        raise PetiteError(f"site {site}: no folder under the site root {root} (sites there: {held}); "
                          "give the site's folder with --site-root")
    if run != "latest":
        path = folder / "runs" / folder_name(run) / ADAPTER  # as the site named the run's folder
        if not path.is_file():
            held = ", ".join(e.run for e in site_adapters(root, site)) or "none"
            raise PetiteError(f"site {site}: no adapter of run '{run}' ({path} not found); runs with an adapter: "
                              f"{held}")
        return entry(path, site)
    entries = site_adapters(root, site)
    if not entries:
        raise PetiteError(f"site {site}: holds no adapter under {folder / 'runs'} (a run writes one when it finishes)")
    return entries[-1]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
