"""`tracking=none`: nothing is recorded and nothing is written."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from petite_fl.tracking.base import Tracker
from petite_fl.tracking.registry import register_tracker


@register_tracker
class NoTracking(Tracker):
    name = "none"

    def __init__(self, settings: Mapping[str, Any] | None = None, folder: Path | None = None, name: str = "",
                 tags: Mapping[str, str] | None = None, store: Path | None = None) -> None:
        pass
