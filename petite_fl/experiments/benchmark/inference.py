"""Benchmark section `inference`: whole-volume sliding-window prediction per scanner geometry."""

from __future__ import annotations

import time
from typing import Any


def inference(p: dict[str, Any], device_name: str) -> dict[str, Any]:
    """Whole-volume sliding-window prediction at each scanner's matrix and training window."""
    import numpy as np
    import torch

    from petite_fl.models.registry import build_backbone
    from petite_fl.scanners import available_scanners, get_scanner
    from petite_fl.training.device import resolve_device, use_amp
    from petite_fl.training.inference import predict_volume

    device = resolve_device(device_name)
    amp = use_amp("auto", device)
    torch.manual_seed(0)
    model = build_backbone("unetr", p["infer_preset"]).to(device).eval()
    rows = []
    for name in available_scanners():
        scanner = get_scanner(name)
        roi = tuple(round(s * p["infer_patch_scale"]) for s in scanner.patch)
        volume = np.random.default_rng(0).random(tuple(scanner.matrix), dtype=np.float32)
        predict_volume(model, volume[: roi[0], : roi[1], : roi[2]], roi, device=device, amp=amp)  # warm-up
        begin = time.perf_counter()
        predict_volume(model, volume, roi, device=device, overlap=0.5, sw_batch_size=4, amp=amp)
        rows.append({"scanner": name, "matrix": list(scanner.matrix), "roi": list(roi), "overlap": 0.5,
                     "seconds": time.perf_counter() - begin})
    return {"model": "unetr", "preset": p["infer_preset"], "amp": amp, "rows": rows}
