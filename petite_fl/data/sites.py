"""Which manifest a site name means, and one split of it ready for training or evaluation.

Every job (pretraining, fine-tuning, a federated site's rounds, the pooled arm, evaluation)
starts the same way: find the site's manifest (a synthetic scanner is generated on first
use), load one split, refuse it if it is empty, and size the patch the backbone sees. That
is `site_split`, in one place.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig

from petite_fl.config import expand_path
from petite_fl.data.cache import load_cached
from petite_fl.data.manifest import read_manifest
from petite_fl.data.site import SiteData
from petite_fl.data.synthetic import SynthSpec, dataset_dir, generate, site_manifest
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.scanners import available_scanners, get_scanner

Patch = tuple[int, int, int]
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def is_scanner(ref: str) -> bool:
    """A synthetic scanner's name (made on first use), not a manifest file."""
    return str(ref) in available_scanners() and not Path(str(ref)).is_file()


def resolve_site(cfg: DictConfig, ref: str) -> Path:
    """A manifest path for a site: a scanner of the synthetic data set (made if needed) or a file."""
    ref = str(ref)
    if is_scanner(ref):
        if ref not in cfg.data.synth.scanners:
            raise ConfigError(f"site '{ref}' is not in data.synth.scanners {list(cfg.data.synth.scanners)}")
        generate(SynthSpec.from_config(cfg.data.synth), dataset_dir(cfg.data), workers=int(cfg.data.synth.workers))
        return site_manifest(cfg.data, ref)
    path = expand_path(ref)
    if not path.is_file():
        raise ConfigError(f"site '{ref}' is neither a registered scanner ({', '.join(available_scanners())}) "
                          "nor a manifest file")
    return path


def training_patch(manifest: Path, train_cfg: DictConfig, multiple: int) -> Patch:
    """The site's scanner patch × train.patch_scale, each side at the nearest multiple of the backbone's.

    Snapped rather than refused: scanner 5's 64×64×32 at 0.75 is 48×48×24, and its 24
    planes become 32 (a token grid of 3×3×2 for UNETR's 16³ patches).
    """
    scanner = read_manifest(manifest).scanner
    if scanner is None:
        raise ConfigError(f"{manifest}: no 'scanner' field, so petite-fl cannot pick the training patch size")
    scale = float(train_cfg.patch_scale)
    if scale <= 0:
        raise ConfigError(f"train.patch_scale must be positive, got {scale}")
    return tuple(max(multiple, multiple * round(p * scale / multiple)) for p in get_scanner(scanner).patch)


def site_split(cfg: DictConfig, manifest: Path, split: str, multiple: int | None, site: str | None = None,
               purpose: str = "", truth: bool = False) -> tuple[SiteData, Patch | None]:
    """One split of a site, validated and scaled as `data.loader` says, and the patch its backbone
    (whose window sides are multiples of `multiple`; None: no patch needed) trains and predicts with.

    `truth`: with the rows' noise-free truth and region labels where a simulated site has them
    (evaluation only: training never asks). An empty split is refused in one line naming the
    site, its manifest and `purpose`.
    """
    # Held in memory for the process's later rounds and arms while the files are unchanged (`data.cache`).
    data = load_cached(manifest, (split,), str(cfg.data.loader.scaling), truth)
    if not data.pairs[split]:
        who = f"site {site}: " if site else ""
        raise ConfigError(f"{who}{manifest} has no '{split}' subjects{' ' + purpose if purpose else ''}")
    return data, None if multiple is None else training_patch(manifest, cfg.train, multiple)


def split_counts(cfg: DictConfig, site: str) -> tuple[dict[str, int], str]:
    """(subjects per split of a site, where they are set), before any data is generated."""
    if is_scanner(site):
        spec = SynthSpec.from_config(cfg.data.synth)
        where = f"data.synth.sizes.{site}" if site in dict(spec.sizes) else "data.synth.splits"
        return dict(spec.splits_for(site)), where
    manifest = resolve_site(cfg, site)
    return read_manifest(manifest).counts(), str(manifest)


def site_labels(refs: list[str]) -> dict[str, str]:
    """What each site is called in reports, tables and file names: a scanner's name, a manifest's `site`
    field (its folder's name if it has none or cannot be read); a manifest path is no column heading or
    file name. Where two sites would share a label, they keep their references."""
    def label(ref: str) -> str:
        if is_scanner(ref) or not ref.endswith(".json"):
            return ref
        path = expand_path(ref)
        try:
            name = read_manifest(path).site
        except (PetiteError, OSError):
            name = ""
        return _UNSAFE.sub("_", name or path.parent.name).strip("._") or ref

    labels = {ref: label(str(ref)) for ref in refs}
    clash = {v for v in labels.values() if list(labels.values()).count(v) > 1}
    return {ref: ref if name in clash else name for ref, name in labels.items()}
