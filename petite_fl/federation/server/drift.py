"""How far the shared LoRA A matrices move, measured at the coordinator per site and round.

FedSA-LoRA (`split-lora`) shares LoRA's A and keeps B at each site. Whether sharing A can
change anything depends on how far A moves at all: a site whose A stays near the common
initialisation sends nearly what every other site sends. The coordinator initialises the
adapter exactly as the sites do (same seed), so it knows A₀, and it receives every site's
A after each round. Over all LoRA A tensors together (the Frobenius norm of their
concatenation) it records
- `a_from_init`  = ‖Aᵢ − A₀‖ / ‖A₀‖: how far A has moved since initialisation,
- `a_from_round` = ‖Aᵢ − A_g‖ / ‖A_g‖: how far this one round moved it (A_g: the global A
  the round started from),
- `a_to_average` = ‖Aᵢ − Ā‖ / ‖A_g‖: how far the average Ā the site gets back is from what it
  sent, on the same scale (≈ `a_from_round`: averaging undid the site's own move; ≪: the sites
  moved A alike),
and the first two for the new global A after averaging (site `global`). Any strategy that shares A
tensors gets the rows (fedavg too). Under SecAgg+ the coordinator sees only the sum: the
global row alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from petite_fl.peft.naming import method_of, role_of

#: the row of the averaged A, beside the sites' rows
GLOBAL = "global"


def lora_a_names(names: Iterable[str]) -> list[str]:
    """The LoRA A tensors among `names`."""
    return sorted(n for n in names if method_of(n) == "lora" and role_of(n) == "A")


def _norm(x: Mapping[str, torch.Tensor], names: list[str], minus: Mapping[str, torch.Tensor] | None = None) -> float:
    """‖x − minus‖ (or ‖x‖) over the tensors `names` taken together, in float64."""
    return math.sqrt(sum(float(((x[n].double() - (minus[n].double() if minus is not None else 0.0)) ** 2).sum())
                         for n in names))


def relative_distance(x: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor], names: list[str],
                      scale: Mapping[str, torch.Tensor] | None = None) -> float:
    """‖x − ref‖ / ‖scale‖ (scale: `ref` by default) over the tensors `names` together; NaN for a zero scale."""
    den = _norm(ref if scale is None else scale, names)
    return _norm(x, names, ref) / den if den > 0 else math.nan


def drift_rows(rnd: int, init: Mapping[str, torch.Tensor], start: Mapping[str, torch.Tensor],
               uploads: Mapping[str, Mapping[str, torch.Tensor]],
               new_global: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """One row per site (its uploaded A) and one for the new global A: the distance of each from the
    initial A (`init`) and from the global A the round started from (`start`), and of each site's A
    from the new average. No rows when nothing shared is a LoRA A tensor."""
    names = lora_a_names(start)
    if not names:
        return []
    averaged = all(n in new_global for n in names)
    after = {**{site: tensors for site, tensors in uploads.items() if all(n in tensors for n in names)},
             **({GLOBAL: new_global} if averaged else {})}
    return [{"round": rnd, "site": site, "a_from_init": relative_distance(a, init, names),
             "a_from_round": relative_distance(a, start, names),
             "a_to_average": relative_distance(a, new_global, names, scale=start)
             if averaged and site != GLOBAL else None, "a_tensors": len(names)}
            for site, a in after.items()]


def tracked(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The rows as tracker scalars: `lora_a/{from_init,from_round,to_average}/<site>` (the global row has
    no `to_average`)."""
    return {f"lora_a/{key}/{r['site']}": r[f"a_{key}"] for r in rows
            for key in ("from_init", "from_round", "to_average") if r[f"a_{key}"] is not None}
