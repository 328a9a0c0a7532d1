"""No fine-tuning: the pretrained backbone as is (the paper's lower reference)."""

from __future__ import annotations

from petite_fl.peft.base import Method
from petite_fl.peft.registry import register_method


@register_method
class NoFineTuning(Method):
    name = "none"
    summary = "no fine-tuning (reference)"

    def parts(self, backbone) -> tuple[str, ...]:
        return ()
