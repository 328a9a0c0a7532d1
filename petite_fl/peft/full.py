"""Full fine-tuning: every backbone weight trains (the paper's upper reference)."""

from __future__ import annotations

from petite_fl.peft.base import Method
from petite_fl.peft.registry import register_method


@register_method
class FullFineTuning(Method):
    name = "full"
    summary = "full fine-tuning (reference, 100 %)"

    def parts(self, backbone) -> tuple[str, ...]:
        return ("encoder", "decoder")
