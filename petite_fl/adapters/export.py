"""Exporting a site's adapter: a bundle (backbone + adapter + card) or a standalone merged model.

The adapter is picked as inference picks it (`catalog.pick`: a site's latest run or a named
one), or given as a file; its backbone is the one it was trained on, from the site's
backbone cache (`<site_root>/<site>/backbones/<sha256>.safetensors`), or a file given by the
user, refused in one line if its hash is not the adapter's.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from petite_fl import __version__
from petite_fl.adapters.catalog import entry, file_sha256, read_meta, site_names
from petite_fl.adapters.catalog import pick as pick_adapter
from petite_fl.artifacts import load_adapter, load_backbone, save_backbone
from petite_fl.atomic import atomic_path, write_json
from petite_fl.errors import PetiteError
from petite_fl.federation.site.paths import cached_backbone

MODEL, CONFIG, CARD = "model.safetensors", "config.json", "card.json"
BUNDLE_ADAPTER, BUNDLE_BACKBONE = "adapter.safetensors", "backbone.safetensors"


@dataclass(frozen=True)
class Source:
    """The adapter to export and the backbone it was trained on (hash checked)."""

    adapter: Path
    backbone: Path
    meta: dict[str, Any]           # the adapter's metadata
    backbone_meta: dict[str, Any]
    site: str
    run: str

    @property
    def card(self) -> dict[str, Any]:
        return dict(self.meta.get("card") or {})


def resolve(site_root: Path, site: str | None = None, run: str = "latest", adapter: Path | None = None,
            backbone: Path | None = None) -> Source:
    """The adapter (a site's run or a file) and its backbone (the site's cache or a file)."""
    root = Path(site_root).expanduser()
    if adapter is not None:
        if not Path(adapter).is_file():
            raise PetiteError(f"adapter file not found: {adapter}")
        picked = entry(Path(adapter), site)
    elif site:
        picked = pick_adapter(root, site, run)
    else:
        raise PetiteError("say which adapter to export: --site NAME (with --run, default latest) or --adapter FILE")
    meta = read_meta(picked.path)
    path = Path(backbone).expanduser() if backbone is not None else _cached_backbone(root, picked.site, meta,
                                                                                     picked.path)
    backbone_meta = load_backbone(path)[1]  # content checked against its recorded hash
    load_adapter(picked.path, backbone_meta)  # refuses a backbone the adapter was not trained on
    return Source(picked.path, path, meta, backbone_meta, picked.site, picked.run)


def _cached_backbone(root: Path, site: str, meta: dict[str, Any], adapter: Path) -> Path:
    sha = str(meta["backbone_sha256"])
    for name in dict.fromkeys([site, *site_names(root)]):  # its own site's cache first, then any other's
        path = cached_backbone(root, name, sha)
        if path.is_file():
            return path
    trained_with = meta.get("backbone_file")  # a single-site fine-tuning names its backbone file
    if trained_with and Path(trained_with).is_file():
        return Path(trained_with)
    raise PetiteError(f"{adapter}: its backbone {sha[:12]}… is in no site's backbone cache under {root} "
                      f"(<site>/backbones/{sha[:12]}….safetensors); give it with --backbone FILE")


def output_folder(out: Path) -> Path:
    """--out, made; a file there is one line, not a traceback."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise PetiteError(f"--out {out}: a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def export_bundle(source: Source, out: Path) -> list[Path]:
    """`out/adapter.safetensors` + its JSON + `card.json` + `backbone.safetensors`: what
    `petite infer --backbone out/backbone.safetensors --adapter out/adapter.safetensors` runs."""
    out = output_folder(out)
    paths = [out / BUNDLE_ADAPTER, out / "adapter.json", out / CARD, out / BUNDLE_BACKBONE]
    _copy(source.adapter, paths[0])
    write_json(paths[1], source.meta)
    write_json(paths[2], source.card)
    _copy(source.backbone, paths[3])
    return paths


def export_merged(source: Source, out: Path) -> tuple[list[Path], Any]:
    """`out/model.safetensors` (a backbone file: plain names, adapter folded in), `config.json`
    and `card.json`; the merged network is checked against backbone + adapter first."""
    from petite_fl.adapters.merge import merge_adapter

    merged = merge_adapter(source.backbone, source.adapter)
    card = source.card
    inference = dict(card.get("inference") or {})
    patch = inference.get("patch") or source.meta.get("patch") or source.backbone_meta["provenance"].get("patch")
    provenance = {"merged": True, "site": source.site, "run": source.run, "peft": card.get("peft"),
                  "adapter_sha256": file_sha256(source.adapter),
                  "source_backbone_sha256": source.backbone_meta["sha256"],
                  "patch": patch, "petite_fl": __version__,
                  "check": {"max_abs_diff": merged.max_abs_diff, "output_range": merged.output_range}}
    out = output_folder(out)
    meta = save_backbone(merged.model, out / MODEL, provenance)
    config = {"model": meta["model"], "config": meta["config"], "sha256": meta["sha256"],
              "merge_slots": merged.slots, "inference": inference, "provenance": provenance}
    write_json(out / CONFIG, config)
    write_json(out / CARD, card)
    return [out / MODEL, out / CONFIG, out / CARD], merged
