"""Which PEFT method a trainable tensor belongs to, from the names the methods give it."""

from __future__ import annotations

# Marker in the parameter name → method (each method file names its tensors this way).
MARKERS = (
    ("lora_", "lora"),
    ("ssf_scale", "ssf"),
    ("ssf_shift", "ssf"),
    ("bitfit_delta", "bitfit"),
    ("petite_adapter", "adapter"),
    ("vpt_prompts", "vpt"),
    ("ln_tuning_layers", "layernorm"),
)


def method_of(name: str) -> str:
    """The PEFT method of a trainable tensor; a plain backbone weight is `full`."""
    for marker, method in MARKERS:
        if marker in name:
            return method
    return "full"
