"""`shared-encoder`: encoder-side PEFT averaged across sites, decoder-side PEFT personal.

The brief's "aggregated shared encoder PEFT": scanners share how to read noisy PET
(encoder), and each keeps how to render its own resolution and texture (decoder). Decoder
tensors never leave the site. Same site code as fedavg; only the sharing rule differs.
"""

from __future__ import annotations

from petite_fl.federation.strategies.base import Strategy
from petite_fl.federation.strategies.registry import register


@register
class SharedEncoder(Strategy):
    name = "shared-encoder"
