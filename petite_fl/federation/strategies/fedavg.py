"""`fedavg`: all PEFT tensors averaged into one global adapter (McMahan et al., AISTATS 2017).

With `proximal_mu > 0` each site adds μ/2‖θ − θ_global‖² to its loss (FedProx, Li et al.,
MLSys 2020). Narrowing `sharing` is a config file, not a new strategy: `shared-encoder`
(share `encoder/*`), `fedbn` (keep `*/ssf` and `*/layernorm` local) and `split-lora`
(share `*/lora/A`, FedSA-LoRA) all select `algorithm: fedavg`.
"""

from __future__ import annotations

from petite_fl.federation.strategies.base import Strategy
from petite_fl.federation.strategies.registry import register


@register
class FedAvg(Strategy):
    algorithm = "fedavg"
