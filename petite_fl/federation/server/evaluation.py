"""The final evaluation a site reports, read and checked before the server keeps any of it.

A site answers the server's `evaluate` message with its final model's metrics: means over
its validation (head-mask metrics only when validated on whole volumes) and test splits,
and for the test split every subject's metrics as lists
in the order of the split (position, never subject id or path). The comparison pairs
those per-subject values across arms; a reply whose lists do not match its own subject
count, or that holds a non-finite value, is refused as a whole, in one line.

A simulated site (its manifest has the noise-free truth) adds the metrics against the truth
(TRUTH_METRICS, RATIO_METRICS): optional, since a real site has none, but when a reply
carries one it is checked like the others, its mean and one value per test subject.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from petite_fl.training.inference import METRICS, RATIO_METRICS, TRUTH_METRICS

OPTIONAL = TRUTH_METRICS + RATIO_METRICS


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
        for key in OPTIONAL:
            if f"{split}_{key}" in metrics or (split == "test" and f"test_subject_{key}" in metrics):
                value = _number(metrics.get(f"{split}_{key}"))
                if value is None:
                    return f"{split}_{key} is missing or not a finite number"
                row[key] = value
        means[split] = row
    subjects: list[dict[str, float]] = []
    if "test" in splits:
        n = int(means["test"]["subjects"])
        columns = {}
        for key in [*METRICS, *(k for k in OPTIONAL if k in means["test"])]:
            values = metrics.get(f"test_subject_{key}")
            if not isinstance(values, list) or len(values) != n:
                return f"test_subject_{key} must list one value per test subject ({n})"
            numbers = [_number(v) for v in values]
            if any(v is None for v in numbers):
                return f"test_subject_{key} holds a value that is not a finite number"
            columns[key] = numbers
        subjects = [{key: column[i] for key, column in columns.items()} for i in range(n)]
    return means, subjects


def adapter_file(name: str | None, site_root: Path) -> str | None:
    """Where a site's final adapter is, as far as this coordinator can tell: a site names it under its
    own root (`<site>/runs/<run>/adapter.safetensors`, never an absolute path); where this coordinator's
    `federation.site_root` holds that file (a simulation, sites in this process), the file's path;
    otherwise the site's name for it. A name that is absolute or climbs out (`..`) is not kept."""
    if not name:
        return None
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive or not parts or ".." in parts:
        return None
    here = Path(site_root).joinpath(*parts)
    return str(here) if here.is_file() else name
