"""What the benchmarks measure with: the machine, peak memory, and timed training steps.

Kept outside the benchmark (petite_fl.experiments.benchmark) because the server reports its own peak memory
with the same function, so that a README figure and a run's summary mean the same thing.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

#: seconds spent in each named phase in this process so far (`phase`): where a site's round goes
PHASES: dict[str, float] = defaultdict(float)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the time of the block to PHASES[name]: a benchmark reads how a site's round splits
    (validation, data, training) without the site sending it anywhere."""
    begin = time.perf_counter()
    try:
        yield
    finally:
        PHASES[name] += time.perf_counter() - begin


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The facts a reader needs to compare a figure with their own machine."""
    import psutil

    info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": str(device)}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def machine_label(info: dict[str, Any]) -> str:
    if "gpu" in info:
        return f"{info['gpu']} ({info['gpu_memory_gib']} GiB), {info['cores']} CPU cores"
    return f"CPU only: {info['cores']} × {info['cpu']}, {info['ram_gib']} GiB RAM"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, warmup: int, steps: int, device: torch.device) -> list[float]:
    """Seconds of each of `steps` calls of `step()` after `warmup` untimed ones.

    The warm-up matters: the first steps allocate optimizer state and fill allocator
    caches (on CPU the first full fine-tuning steps of paper-size UNETR take 3× longer).
    """
    for _ in range(warmup):
        step()
    synchronize(device)
    out = []
    for _ in range(steps):
        begin = time.perf_counter()
        step()
        synchronize(device)
        out.append(time.perf_counter() - begin)
    return out
