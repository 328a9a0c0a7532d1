"""The site half of a federated run: what a scanner site does with each message.

A `SiteWorker` is rebuilt for every message (in deployment each message gets a fresh
ClientApp process), so everything that must outlive a message is on the site's disk,
under `federation.site_root/<site>/`: the backbone cache (by SHA-256), and per run the
personal tensors of the last rounds. Nothing personal is held by the server.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from petite_fl.artifacts import save_adapter
from petite_fl.atomic import atomic_path, private_dir
from petite_fl.config import expand_path
from petite_fl.console import console
from petite_fl.data.manifest import read_manifest
from petite_fl.data.patches import site_patch_dataset
from petite_fl.data.sites import resolve_site, site_split, training_patch
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.federation.messages import HelloRes
from petite_fl.federation.site.backbone_cache import BackboneCache
from petite_fl.federation.site.limits import check_trainable
from petite_fl.federation.site.paths import run_folder, site_dir
from petite_fl.federation.site.policy import SIMULATION, SitePolicy, spec_methods
from petite_fl.federation.strategies import LocalTraining, Strategy
from petite_fl.modelcard import inference_settings, make_card
from petite_fl.models.registry import build_backbone
from petite_fl.peft.apply import PeftModelState, adapter_state_dict, apply_peft, load_adapter_state
from petite_fl.peft.spec import spec_from_config
from petite_fl.profiling import phase
from petite_fl.runconfig import site_list
from petite_fl.tracking import Tracker, open_tracker
from petite_fl.training.device import device_and_amp
from petite_fl.training.inference import evaluate_split
from petite_fl.training.objectives import make_objective
from petite_fl.training.trainer import train

KEEP_ROUNDS = 2  # personal state of the last rounds kept (a resumed round re-reads round r-1)
#: bytes per value of the uploaded tensors at each transport precision (the site's own tracking)
WIRE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def site_for_node(cfg: DictConfig, node_config: Mapping[str, Any]) -> str:
    """The site this node serves: node-config `site` (deployment) or partition-id (simulation)."""
    if node_config.get("site"):
        return str(node_config["site"])
    if "partition-id" not in node_config:
        raise ConfigError("this node has neither a 'site' nor a 'partition-id' in its node config")
    sites, pid = site_list(cfg), int(node_config["partition-id"])
    if pid >= len(sites):
        raise ConfigError(f"node partition {pid} has no site: federation.sites lists {len(sites)} ({sites}); "
                          "run as many supernodes as sites")
    return sites[pid]


def round_seed(seed: int, site: str, rnd: int, salt: str = "") -> int:
    """A seed per (run seed, site, round): a resumed round draws the same patches."""
    return int(hashlib.sha256(f"{seed}/{site}/{rnd}/{salt}".encode()).hexdigest()[:8], 16)


class SiteWorker:
    """One site's data, caches and state; methods answer the server's messages."""

    def __init__(self, cfg: DictConfig, site: str, manifest: str | None = None,
                 policy: SitePolicy = SIMULATION) -> None:
        self.cfg = cfg
        self.site = site
        self.policy = policy
        self.dir = private_dir(site_dir(expand_path(cfg.federation.site_root), site))  # the site's own, 0700
        self.cache = BackboneCache(self.dir / "backbones")
        # A deployed site names its manifest; a simulated one is a synthetic scanner (made on first use).
        self.manifest = resolve_site(cfg, manifest or site)
        self.device, self.amp = device_and_amp(cfg)

    # -- handshake and backbone -------------------------------------------------------
    def hello(self) -> HelloRes:
        site, _ = site_split(self.cfg, self.manifest, "train", None, self.site)
        return HelloRes(self.site, tuple(self.cache.held()), len(site.pairs["train"]), str(self.device))

    def receive_backbone(self, tensors: dict[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
        """Store a backbone sent by the server, after checking it hashes as announced."""
        with torch.device("meta"):  # its size as the config describes it, before any memory is taken
            described = build_backbone(str(meta["model"]), "paper", **dict(meta["config"]))
        self.policy.check_backbone(described.state_dict(), "the offered backbone's config describes")
        model = build_backbone(str(meta["model"]), "paper", **dict(meta["config"]))
        model.load_state_dict(tensors)
        return self.cache.store(model, str(meta["sha256"]), dict(meta.get("provenance") or {}))

    # -- rounds ----------------------------------------------------------------------
    def run_dir(self, run_name: str) -> Path:
        return run_folder(expand_path(self.cfg.federation.site_root), self.site, run_name)

    def shared_name(self, path: Path) -> str:
        """A file of the site's as the coordinator may read it: its name under the site root
        (`<site>/runs/<run>/adapter.safetensors`), never the site's absolute path (its home, its user)."""
        return path.relative_to(expand_path(self.cfg.federation.site_root)).as_posix()

    def tracker(self, run_name: str) -> Tracker:
        """This site's own tracking of a run, in its run folder: the site's `tracking` section (a deployed
        site's own choice, `runconfig.site_config`). Opened and closed per message (`with`)."""
        return open_tracker(self.cfg.get("tracking"), self.run_dir(run_name), run_name,
                            {"job": "site", "run": run_name, "site": self.site}, store=self.dir / "mlflow")

    def _prepare(self, sha256: str):
        model, meta = self.cache.load(sha256, self.device)  # verified against its content hash
        self.backbone_sha256 = str(meta["sha256"])  # reported with the update: the backbone it was made on
        spec = spec_from_config(self.cfg.peft, model)
        self.policy.check_methods(spec_methods(spec))  # `peft=petite` is known only with the backbone
        torch.manual_seed(int(self.cfg.seed))  # the server initialises the same way
        state = apply_peft(model, spec)
        model.to(self.device)
        init = adapter_state_dict(model, state)
        return model, state, meta, init

    def _personal(self, run_name: str, rnd: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Personal tensors as of round `rnd`: from the latest round ≤ `rnd` this site trained.

        Not necessarily `rnd` itself: a site left out of a round (slow, crashed) continues
        from its own last state when it rejoins.
        """
        if rnd <= 0:
            return {}, {}
        folder = self.run_dir(run_name)
        rounds = sorted((int(m.group(1)) for p in folder.glob("personal-r*.safetensors")
                         if (m := re.fullmatch(r"personal-r(\d+)\.safetensors", p.name))), reverse=True)
        done = [r for r in rounds if r <= rnd]
        if not done:
            if self._trained_before(run_name):
                why = f"no personal state of run '{run_name}' up to round {rnd}"
                raise PetiteError(f"site {self.site}: {why} in {folder}; was the site's folder cleared?",
                                  public=f"{why} (was the site's folder cleared?)")
            return {}, {}  # the site joins this run now: it starts from the initial adapter
        rnd = done[0]
        path = folder / f"personal-r{rnd:04d}.safetensors"
        with safe_open(str(path), framework="pt") as fh:
            extra = json.loads((fh.metadata() or {}).get("petite_fl", "{}"))
        objective = self.run_dir(run_name) / f"objective-r{rnd:04d}.pt"
        if objective.is_file():
            extra["objective"] = torch.load(objective, map_location="cpu", weights_only=True)
        return load_file(str(path)), extra

    def _trained_before(self, run_name: str) -> bool:
        return (self.run_dir(run_name) / "joined").is_file()

    def _save_personal(self, run_name: str, rnd: int, tensors: dict[str, torch.Tensor],
                       objective_state: dict[str, Any], sha256: str) -> None:
        folder = self.run_dir(run_name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "joined").touch(mode=0o600)
        with atomic_path(folder / f"personal-r{rnd:04d}.safetensors") as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                      metadata={"petite_fl": json.dumps({"round": rnd, "backbone_sha256": sha256})})
        if objective_state:  # a GAN's discriminator stays at the site
            with atomic_path(folder / f"objective-r{rnd:04d}.pt") as tmp:
                torch.save(objective_state, tmp)
        for old in folder.glob("*-r*.*"):
            m = re.search(r"-r(\d+)\.", old.name)
            if m and int(m.group(1)) <= rnd - KEEP_ROUNDS:
                old.unlink(missing_ok=True)

    def _evaluate(self, model: torch.nn.Module, split: str, per_round: bool = False,
                  per_subject: bool = False) -> dict[str, Any]:
        return evaluate_split(self.cfg, self.site, self.manifest, model, split, self.device, self.amp,
                              per_round=per_round, per_subject=per_subject)

    def own_shared(self, strategy: Strategy, state: PeftModelState,
                   received: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The received tensors this site shares by its own sharing rule and PEFT spec; any other
        name the server lists is ignored: it can neither pull a personal tensor nor overwrite one."""
        shared = set(strategy.split(state.trainable)[0])
        ignored = sorted(set(received) - shared)
        if ignored:
            console.print(f"site {self.site}: ignored {len(ignored)} tensor(s) the server sent that this site "
                          f"does not share (e.g. {ignored[0]})", markup=False, highlight=False)
        return {n: t for n, t in received.items() if n in shared}

    def train_round(self, strategy: Strategy, run_name: str, rnd: int, total_rounds: int, steps: int,
                    sha256: str, received: dict[str, torch.Tensor], validate: bool, transport: str = "float32",
                    ) -> tuple[dict[str, torch.Tensor], int, dict[str, float]]:
        """Validate the model the round starts from (optional), train, keep the personal part:
        (upload, training scans, metrics). What leaves is decided by the site's own spec."""
        begin = time.perf_counter()
        with phase("site.prepare"):
            model, state, meta, init = self._prepare(sha256)
            check_trainable(state.trainable)
            received = self.own_shared(strategy, state, received)
            self.policy.check_upload({n: init[n] for n in received}, transport)  # before any training
            personal, extra = self._personal(run_name, rnd - 1)
        metrics: dict[str, float] = {}
        if validate:
            with phase("site.validate"):
                load_adapter_state(model, state, strategy.current_adapter(init, received, personal))
                metrics.update(self._evaluate(model, "val", per_round=True))
        with phase("site.data"):
            objective = make_objective(self.cfg.train, model.name, str(meta["provenance"].get("preset", "tiny")),
                                       self.device)
            if "objective" in extra:
                objective.load_state_dict(extra["objective"])
            site, patch = site_split(self.cfg, self.manifest, "train", model.size_multiple, self.site)
            n_train = len(site.pairs["train"])  # the weight of this site's update
            dataset = site_patch_dataset(site, "train", self.cfg.data.loader,
                                         seed=round_seed(int(self.cfg.seed), self.site, rnd) % 2**31, patch=patch)
        calls, step_losses = [0], {}

        def train_steps(n: int, penalty, offset: int, total: int) -> float:
            calls[0] += 1
            torch.manual_seed(round_seed(int(self.cfg.seed), self.site, rnd, f"train{calls[0]}") % 2**31)
            objective.penalty = penalty
            tag = "train/step_loss" + (f"_{calls[0]}" if calls[0] > 1 else "")  # Ditto's second pass apart
            result = train(model, dataset, objective, steps=n, lr=float(self.cfg.peft.lr), train_cfg=self.cfg.train,
                           device=self.device, amp=self.amp, quiet=True,
                           schedule_offset=offset, schedule_total=total,
                           on_step=lambda i, logs: step_losses.setdefault(offset + i, {}).update({tag: logs["loss"]}))
            objective.penalty = None
            return result.final_loss

        job = LocalTraining(names=state.names, load=lambda t: load_adapter_state(model, state, dict(t)),
                            read=lambda: adapter_state_dict(model, state), train=train_steps,
                            round=rnd, steps=steps, total_rounds=total_rounds)
        with phase("site.train"):
            update = strategy.local_update(job, init, received, personal)
        if set(update.upload) - set(received):
            extra = sorted(set(update.upload) - set(received))[:5]  # names of the run's model: the coordinator's own
            why = f"strategy {strategy.name} would upload {extra} beyond the shared tensors"
            raise PetiteError(f"site {self.site}: {why}", public=why)
        self._save_personal(run_name, rnd, update.personal, objective.state_dict(), sha256)
        seconds = time.perf_counter() - begin
        metrics.update(update.logs)
        metrics["seconds"] = seconds
        with self.tracker(run_name) as tracker:
            for step, losses in sorted(step_losses.items()):
                tracker.scalars(losses, step)
            if validate:  # the model the round started from: round r-1's, as the coordinator's curves
                tracker.scalars({k: v for k, v in metrics.items() if k.startswith("val_")}, rnd - 1)
            tracker.scalars({"train_loss": update.logs.get("train_loss"), "seconds": seconds,
                             "upload_bytes": sum(t.numel() for t in update.upload.values()) * WIRE_BYTES[transport]},
                            rnd)
        console.print(f"site {self.site} · round {rnd}/{total_rounds}: {steps} steps, "
                      f"loss {update.logs.get('train_loss', float('nan')):.4g}, {seconds:.0f} s",
                      markup=False, highlight=False)
        return update.upload, n_train, metrics

    def finish(self, strategy: Strategy, run_name: str, rnd: int, sha256: str,
               received: dict[str, torch.Tensor], splits: tuple[str, ...]) -> tuple[dict[str, Any], Path]:
        """Metrics of the final model and its adapter file, kept at the site."""
        model, state, meta, init = self._prepare(sha256)
        personal, _ = self._personal(run_name, rnd)
        adapter = strategy.current_adapter(init, self.own_shared(strategy, state, received), personal)
        load_adapter_state(model, state, adapter)
        metrics: dict[str, Any] = {}
        for split in splits:  # validation as in the rounds (a comparable curve), test whole-volume
            metrics.update(self._evaluate(model, split, per_round=split == "val", per_subject=split == "test"))
        path = self.run_dir(run_name) / "adapter.safetensors"
        patch = training_patch(self.manifest, self.cfg.train, model.size_multiple)
        card = make_card(site=self.site, run=run_name, strategy=strategy.name, peft=state.spec.label, rounds=rnd,
                         training_scans=read_manifest(self.manifest).counts().get("train"), metrics=metrics,
                         backbone_sha256=str(meta["sha256"]), inference=inference_settings(self.cfg, patch),
                         steps=int(self.cfg.federation.local_steps))
        save_adapter(path, adapter, state.spec.to_dict(), meta, extra={
            "site": self.site, "run": run_name, "strategy": strategy.name, "rounds": rnd, "patch": list(patch),
            "card": card})
        with self.tracker(run_name) as tracker:
            tracker.scalars({k: v for k, v in metrics.items() if k.startswith("val_")}, rnd)  # the curve's end
            tracker.final(metrics)
        return metrics, path
