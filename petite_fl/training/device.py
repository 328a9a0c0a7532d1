"""Device and mixed-precision choice: CUDA and autocast when present, a clear error otherwise."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from omegaconf import DictConfig

from petite_fl.errors import ConfigError


def resolve_device(setting: str = "auto") -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={setting} but CUDA is not available on this machine (use auto or cpu)")
    if setting != "cpu" and not setting.startswith("cuda"):
        raise ConfigError(f"train.device must be auto, cpu or cuda[:N], got '{setting}'")
    return torch.device(setting)


def device_and_amp(cfg: DictConfig) -> tuple[torch.device, bool]:
    """The device `train.device` names and whether mixed precision (`train.amp`) is on there."""
    device = resolve_device(str(cfg.train.device))
    return device, use_amp(cfg.train.amp, device)


def use_amp(setting: str | bool, device: torch.device) -> bool:
    """Mixed precision: on by default with CUDA only (CPU autocast is slower for 3D convs)."""
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast precision: bfloat16 where the device has it (float32's range), float16 on older GPUs."""
    return torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool) -> AbstractContextManager:
    if not enabled:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype(device))
