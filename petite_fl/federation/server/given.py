"""A given adapter evaluated at every site without training (`adapter=FILE`, `federation.rounds=0`).

What a consortium asks before it trains anything: how does this adapter (or the bare
backbone) do on each site's own test split? The coordinator sends the adapter's tensors
as the run's "global" ones in the final `EvaluateIns`; a site builds its PEFT from the
run's config (never from a file), keeps only the tensors its spec shares and fills the rest
from its own initialisation. So the run's `peft` must build the adapter's very spec on
this backbone and the strategy must share every tensor of it — checked here, in one
line each, or a site would evaluate another model than the one named.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from petite_fl.artifacts import load_adapter
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.peft.spec import PeftSpec


def file_sha256(path: Path) -> str:
    """The adapter file's own hash (its name in run names and reports: the same spec, other tensors)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise PetiteError(f"adapter file {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def check_given(path: Path, meta: Mapping[str, Any], built: PeftSpec) -> None:
    """The adapter's header against the spec the run's `peft` builds: refused if a site would not
    evaluate exactly this adapter."""
    if meta.get("shared_only"):
        raise PetiteError(f"{path}: holds only the shared tensors of run {meta.get('run')} (its sites keep "
                          "personal ones): evaluate a site's own adapter (its adapter.safetensors) instead")
    spec = PeftSpec.from_dict(dict(meta["peft"]))
    if spec.to_dict() != built.to_dict():
        raise PetiteError(f"{path}: its PEFT spec ({spec.label}, {spec.to_dict()}) is not the run's peft "
                          f"({built.label}, {built.to_dict()}): give the adapter's own spec as the run's peft")


def given_adapter(path: Path, backbone_meta: Mapping[str, Any], built: PeftSpec, shared: Iterable[str],
                  rounds: int) -> dict[str, torch.Tensor]:
    """The tensors a zero-round run sends every site for its final evaluation."""
    if rounds:
        raise ConfigError(f"adapter={path}: a federated run takes a given adapter only to evaluate it at every "
                          f"site without training (federation.rounds=0), got federation.rounds={rounds}")
    tensors, meta = load_adapter(path, dict(backbone_meta))  # missing, unreadable or for another backbone
    check_given(path, meta, built)
    shared = set(shared)
    if set(tensors) != shared:
        extra, lacking = sorted(set(tensors) - shared), sorted(shared - set(tensors))
        raise PetiteError(f"{path}: its tensors are not those the run's strategy shares for {built.label} on this "
                          f"backbone ({len(lacking)} missing, e.g. {lacking[:1]}; {len(extra)} unexpected, e.g. "
                          f"{extra[:1]}): evaluate it with strategy=fedavg")
    return {n: tensors[n].float() for n in sorted(shared)}
