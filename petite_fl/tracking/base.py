"""What every tracker offers a job: its config once, scalars per step or round, final metrics.

The names a job records (one scheme for every tracker, so TensorBoard and MLflow show the same):

- pretrain / finetune (step = optimiser step): `train/<loss term>` (`train/loss`, a GAN's terms
  too), `train/lr`; final: `final/loss` (mean of the last 10 steps), `final/steps`, `final/seconds`,
  and for fine-tuning `final/trainable_percent`.
- a federated run's coordinator (step = round; what it received from each site):
  `val_<metric>/<site>` (the model after round r, as `metrics.csv` has it: round 0 is no
  fine-tuning, round R the final validation), `train_loss/<site>`, `bytes_up/<site>`,
  `bytes_down/<site>` (the round's messages, as `transfer.csv`), `site_seconds/<site>`,
  `backbone_bytes/<site>` (step 0, when it was sent), and where LoRA A is shared
  `lora_a/from_init/<site|global>`, `lora_a/from_round/<site|global>` and `lora_a/to_average/<site>`
  (how far A moved: `federation/server/drift.py`, as `lora_a_drift.csv`);
  per round `val_<metric>/mean` (weighted by validation subjects), `round/seconds`,
  `round/rejected` (updates left out); final: `final/test_<metric>/<site>`, `final/test_<metric>/mean`.
- a site (step = round; its own view, kept at the site): `train_loss`, `train/step_loss`
  (step = step of the run's schedule), `val_<metric>` (the model the round starts from),
  `upload_bytes` (the uploaded tensors at the transport precision), `seconds`;
  final: `final/val_<metric>`, `final/test_<metric>`.
- `petite compare` (step 0): `final/<arm>/test_<metric>/<site|mean>` (mean over seeds) and per
  difference `diff/<arm>-<baseline>/<metric>/<site|pooled>/{mean,low,high}` (the report's intervals).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from petite_fl.atomic import is_private, private_dir

#: tags every tracker attaches to a job (MLflow: run tags; TensorBoard: in the config text)
TAG_KEYS = ("job", "run", "site")


class Tracker:
    """A job's tracking destination. This base records nothing (`tracking=none`)."""

    name = "none"

    def config(self, resolved: Mapping[str, Any]) -> None:
        """The job's resolved configuration, once per job (or per start of a resumed job)."""

    def scalars(self, values: Mapping[str, float | int | None], step: int) -> None:
        """Scalars at one step (an optimiser step or a round); None and non-numbers are skipped."""

    def final(self, values: Mapping[str, float | int | None]) -> None:
        """The job's final metrics (recorded under `final/…`)."""

    def close(self, failed: bool = False) -> None:
        """Flush and release the writer; the tracker records nothing afterwards. `failed`: the job
        ended with an error (MLflow marks its run FAILED)."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.close(failed=kind is not None)


def tracking_folder(path: Path) -> Path:
    """The tracker's folder in a job folder, made; 0700 inside a private folder (a site's or the
    server's state), so that another local user cannot read the curves while they are written."""
    if is_private(path):
        return private_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def keep_private(path: Path) -> None:
    """After the writer closed: its files 0600 and folders 0700 where the job folder is private
    (the writers create them with the process's umask)."""
    if not is_private(path):
        return
    for folder, _, files in os.walk(path):
        os.chmod(folder, 0o700)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o600)


def recorded_config(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration as a tracker records it: `tracking.uri` without the user name and password
    an MLflow server's address may hold (every reader of the tracker would see them)."""
    out = dict(resolved)
    tracking = out.get("tracking")
    if isinstance(tracking, Mapping) and tracking.get("uri"):
        out["tracking"] = {**tracking, "uri": without_credentials(str(tracking["uri"]))}
    return out


def without_credentials(uri: str) -> str:
    """`https://user:token@host/x` → `https://host/x`; any other URI as it is."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite-or-NaN real numbers of `values` as floats (bools, None, strings and lists left out)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        value = float(value)
        if not math.isinf(value):
            out[str(key)] = value
    return out


def final_keys(values: Mapping[str, Any]) -> dict[str, float]:
    """Final metrics under `final/` (a key that already says so is kept)."""
    return {k if k.startswith("final/") else f"final/{k}": v for k, v in numbers(values).items()}


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys → text (MLflow params; lists as their JSON-like text)."""
    if isinstance(tree, Mapping):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: "null" if tree is None else str(tree)}


def step_recorder(tracker: Tracker):
    """The trainer's `on_step` callback recording the step's losses and learning rate as `train/…`."""
    return lambda step, logs: tracker.scalars({f"train/{k}": v for k, v in logs.items()}, step)
