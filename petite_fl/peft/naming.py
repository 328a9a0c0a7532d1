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


#: Roles of a method's tensors that a sharing rule can tell apart (FedSA-LoRA shares A, keeps B).
ROLES = {"lora": (("lora_A", "A"), ("lora_B", "B"))}


def role_of(name: str) -> str:
    """The role of a trainable tensor within its method ('A', 'B' for LoRA), or ''."""
    return next((role for marker, role in ROLES.get(method_of(name), ()) if marker in name), "")
