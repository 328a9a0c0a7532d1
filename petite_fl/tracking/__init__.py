"""Experiment tracking: every job's curves, config and final metrics, by the `tracking` config group.

One file per tracker (`tensorboard`, `mlflow`, `none`), each registering itself; `open_tracker`
opens the one a config names. See `base.Tracker` for what a job records and where.
"""

from petite_fl.tracking.base import Tracker, step_recorder
from petite_fl.tracking.registry import (
    TRACKERS,
    available_trackers,
    job_tracker,
    open_tracker,
    register_tracker,
    tracker_name,
)

__all__ = ["TRACKERS", "Tracker", "available_trackers", "job_tracker", "open_tracker", "register_tracker",
           "step_recorder", "tracker_name"]
