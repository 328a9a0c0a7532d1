"""`petite compare --evaluate ADAPTER|backbone`: one adapter, or the bare backbone, evaluated at every
site on its own test split without training, with the comparison's per-subject report.

No new machinery: the bare backbone is the `no-finetune` arm; an adapter is one more zero-round
arm, `adapter` (strategy fedavg, the adapter's own PEFT spec as the run's `peft`,
`adapter=FILE`), whose coordinator sends the file's tensors as the "global" ones of the final
evaluation (`federation.server.given`), paired per subject against `no-finetune`. Everything
is checked here, before anything is submitted: the file, its backbone, and that a site would
build exactly its spec from the run's config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from petite_fl.adapters.catalog import read_header
from petite_fl.config import compose, expand_path, hydra_list, hydra_override
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.federation.server.given import check_given, file_sha256
from petite_fl.models.registry import build_backbone
from petite_fl.peft.spec import PeftSpec, config_overrides, spec_from_config
from petite_fl.training.jobs import default_backbone_path

BACKBONE = "backbone"
ARM = "adapter"
BASELINE = "no-finetune"


@dataclass(frozen=True)
class Evaluation:
    """The arms to run and the overrides that define them (and name the backbone)."""

    arms: list[str]
    overrides: list[str]
    key: list[str]  # the adapter's content hash: another file of the same path is another comparison


def evaluation(cfg: DictConfig, what: str) -> Evaluation:
    """The arms of `--evaluate what` (an adapter file or `backbone`), after every check."""
    if what == BACKBONE:
        return Evaluation([BASELINE], [], [])
    path = expand_path(what)
    if not path.is_file():
        raise ConfigError(f"--evaluate {what}: no such adapter file (give an adapter file, or `backbone` for the "
                          "bare backbone)")
    if ARM in cfg.compare.arms:
        raise ConfigError(f"--evaluate adds the arm '{ARM}', which compare.arms already defines")
    meta = read_header(path, "adapter")  # not a petite-fl adapter: one line
    backbone = adapter_backbone(cfg, path, meta)
    spec = PeftSpec.from_dict(dict(meta["peft"]))
    peft = config_overrides(spec)
    with torch.device("meta"):  # the backbone's structure, for the spec's checks, without its weights
        model = build_backbone(str(meta["backbone_model"]), "paper", **dict(meta["backbone_config"]))
    check_given(path, meta, spec_from_config(compose("config", peft).peft, model))
    arm = ["strategy=fedavg", "federation.rounds=0", hydra_override("adapter", path), *peft]
    return Evaluation([BASELINE, ARM], [hydra_override("backbone", backbone), hydra_list(f"+compare.arms.{ARM}", arm)],
                      [file_sha256(path)])


def adapter_backbone(cfg: DictConfig, path: Path, meta: dict) -> Path:
    """The backbone the adapter was made on: `backbone=FILE` if it is that one, else the file the adapter
    names or this config's cached backbone when either is; refused in one line otherwise."""
    want = str(meta["backbone_sha256"])
    if cfg.backbone:
        given = expand_path(cfg.backbone)
        sha = read_header(given, "backbone").get("sha256") if given.is_file() else None
        if sha != want:
            raise PetiteError(f"--evaluate {path}: the adapter was made on backbone {want[:12]}… "
                              f"({meta.get('backbone_model')}), not on backbone={cfg.backbone} "
                              f"({'no such file' if sha is None else str(sha)[:12] + '…'}); give the backbone it "
                              "was made on")
        return given
    for candidate in (meta.get("backbone_file"), default_backbone_path(cfg)):
        if candidate and Path(candidate).is_file() and read_header(Path(candidate), "backbone").get("sha256") == want:
            return Path(candidate)
    raise PetiteError(f"--evaluate {path}: the adapter was made on backbone {want[:12]}… "
                      f"({meta.get('backbone_model')}), which is neither the file it names nor this config's "
                      "backbone; give it with backbone=FILE")
