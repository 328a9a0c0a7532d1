"""`local`: every site trains its own PEFT; nothing leaves a site, nothing is averaged.

The baseline of the comparison. It runs through the same apps, rounds and step budget as
the federated strategies, so the only difference is the aggregation.
"""

from __future__ import annotations

from petite_fl.errors import ConfigError
from petite_fl.federation.strategies.base import Strategy
from petite_fl.federation.strategies.registry import register


@register
class Local(Strategy):
    algorithm = "local"

    def __init__(self, cfg):
        super().__init__(cfg)
        if self.rule.share:
            raise ConfigError("strategy 'local' shares nothing: leave strategy.sharing.share empty")
