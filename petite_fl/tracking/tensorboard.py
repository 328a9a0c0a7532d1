"""`tracking=tensorboard` (the default): TensorBoard event files in `<job folder>/tensorboard/`.

Written by torch's own `SummaryWriter` (imported when a job opens one): the resolved config as
YAML text, scalars per step or round, final metrics as `final/…` scalars. A resumed job adds an
event file to the same folder and TensorBoard reads them as one run:
`tensorboard --logdir <job folder>/tensorboard` (or a parent folder, for several jobs).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from petite_fl.tracking.base import (
    TAG_KEYS,
    Tracker,
    final_keys,
    keep_private,
    numbers,
    recorded_config,
    tracking_folder,
)
from petite_fl.tracking.registry import register_tracker

FOLDER = "tensorboard"


@register_tracker
class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, settings: Mapping[str, Any], folder: Path, name: str, tags: Mapping[str, str],
                 store: Path | None = None) -> None:
        """`store` is for trackers with a shared store (MLflow): event files always go in the job's folder."""
        from torch.utils.tensorboard import SummaryWriter

        self.tags = {k: tags[k] for k in TAG_KEYS if k in tags}
        self.folder = tracking_folder(Path(folder) / FOLDER)
        self.writer: Any = SummaryWriter(log_dir=str(self.folder))
        self.last_step = 0

    def config(self, resolved: Mapping[str, Any]) -> None:
        text = yaml.safe_dump({"petite": self.tags, **recorded_config(resolved)}, sort_keys=False)
        # four-space indent: TensorBoard renders text as Markdown, a code block keeps the YAML as it is
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), self.last_step)

    def scalars(self, values: Mapping[str, Any], step: int) -> None:
        for key, value in numbers(values).items():
            self.writer.add_scalar(key, value, int(step))
        self.last_step = max(self.last_step, int(step))

    def final(self, values: Mapping[str, Any]) -> None:
        for key, value in final_keys(values).items():
            self.writer.add_scalar(key, value, self.last_step)

    def close(self, failed: bool = False) -> None:
        if self.writer is not None:
            self.writer.close()  # flushes and stops the writer's thread
            self.writer = None
            keep_private(self.folder)
