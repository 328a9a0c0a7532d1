"""PEFT methods (one file each), Mix-PEFT specs, and applying them to a backbone."""

from petite_fl.peft.apply import PeftModelState, apply_peft, load_adapter_state, merge_peft
from petite_fl.peft.registry import available_methods, get_method
from petite_fl.peft.spec import PeftSpec, feasible_mixes

__all__ = [
    "PeftModelState",
    "PeftSpec",
    "apply_peft",
    "available_methods",
    "feasible_mixes",
    "get_method",
    "load_adapter_state",
    "merge_peft",
]
