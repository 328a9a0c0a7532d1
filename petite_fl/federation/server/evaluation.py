"""The final evaluation a site reports, read and checked before the server keeps any of it.

A site answers the server's `evaluate` message with its final model's metrics: means over
its validation (head-mask metrics only when validated on whole volumes) and test splits,
and for the test split every subject's metrics as lists
in the order of the split (position, never subject id or path). The comparison pairs
those per-subject values across arms; a reply whose lists do not match its own subject
count, or that holds a non-finite value, is refused as a whole, in one line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from petite_fl.training.inference import METRICS


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        return None
    return float(value)


def read_final_metrics(metrics: Mapping[str, Any], splits: tuple[str, ...]
                       ) -> tuple[dict[str, dict[str, float]], list[dict[str, float]]] | str:
    """({split: {"subjects": n, metric: mean}}, [per test subject {metric: value}]), or why not."""
    means: dict[str, dict[str, float]] = {}
    for split in splits:
        n = metrics.get(f"{split}_subjects")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            return f"{split}_subjects is {n!r}, not a positive whole number"
        row: dict[str, float] = {"subjects": n}
        for key in METRICS:
            if f"{split}_{key}" not in metrics and key.endswith("_fg") and split != "test":
                continue  # per-round validation on patches has no head mask
            value = _number(metrics.get(f"{split}_{key}"))
            if value is None:
                return f"{split}_{key} is missing or not a finite number"
            row[key] = value
        means[split] = row
    subjects: list[dict[str, float]] = []
    if "test" in splits:
        n = int(means["test"]["subjects"])
        columns = {}
        for key in METRICS:
            values = metrics.get(f"test_subject_{key}")
            if not isinstance(values, list) or len(values) != n:
                return f"test_subject_{key} must list one value per test subject ({n})"
            numbers = [_number(v) for v in values]
            if any(v is None for v in numbers):
                return f"test_subject_{key} holds a value that is not a finite number"
            columns[key] = numbers
        subjects = [{key: columns[key][i] for key in METRICS} for i in range(n)]
    return means, subjects
