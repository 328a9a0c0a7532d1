"""What a run may spend at a site, and that it trains at all (the site policy's resource and learning checks).

Every setting of the run that sizes the site's work (rounds, local steps, batch, loader workers,
patch size and count, evaluation windows) has an upper bound in the site's policy
(`SitePolicy.max_*`, `None` = no bound), so a coordinator cannot ask 10¹² steps or 10⁴ worker
processes. A run that would train nothing is refused whatever the policy: a learning rate of
zero (or negative, or not a number) or a round of zero steps turns a train message into a
measurement of the coordinator's weights on the site's training scans. Called by `SitePolicy`
at the hello and at every message.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from petite_fl.errors import PolicyError

if TYPE_CHECKING:
    from petite_fl.federation.site.policy import SitePolicy

#: policy key → (the run settings it bounds, the smallest value that makes sense, whether that value is allowed)
BOUNDS: dict[str, tuple[tuple[str, ...], float, bool]] = {
    "max_rounds": (("federation.rounds",), 0, True),
    "max_local_steps": (("federation.local_steps",), 0, True),
    "max_batch_size": (("train.batch_size",), 1, True),
    "max_num_workers": (("train.num_workers",), 0, True),
    "max_patch_scale": (("train.patch_scale",), 0, False),
    "max_patches_per_volume": (("data.loader.patches_per_volume",), 1, True),
    "max_eval_batch_size": (("train.eval.sw_batch_size",), 1, True),
    "max_eval_overlap": (("train.eval.overlap", "federation.val.overlap"), 0, True),
    "max_val_patches": (("federation.val.patches",), 1, True),
}
#: the learning rates a site's training reads: the PEFT (or full fine-tuning) rate, a GAN's discriminator's
LEARNING_RATES = ("peft.lr", "train.gan.d_lr")
NOTHING = "a run that trains nothing only measures the coordinator's weights on this site's training scans"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def check_value(policy: SitePolicy, key: str, path: str, value: Any) -> None:
    """One setting against its bound: a number, not below what makes sense, not above the policy's maximum."""
    _, low, closed = BOUNDS[key]
    number, most = _number(value), getattr(policy, key)
    if number is None or number < low or (number == low and not closed):
        floor = f"≥ {low:g}" if closed else f"> {low:g}"
        raise PolicyError(f"refused: the run asks {path}={value!r}, which must be a number {floor}")
    if most is not None and number > most:
        raise policy.refusal(key, f"the run asks {path}={value if isinstance(value, int) else f'{number:g}'}")


def check_resources(policy: SitePolicy, cfg: Any) -> None:
    """Every bounded setting of the run's configuration (a setting the run does not have is not checked)."""
    for key, (paths, _, _) in BOUNDS.items():
        for path in paths:
            value = OmegaConf.select(cfg, path, default=None)
            if value is not None:
                check_value(policy, key, path, value)


def check_learning(cfg: Any) -> None:
    """The run trains something: positive finite learning rates, local steps when it has rounds."""
    for path in LEARNING_RATES:
        value = OmegaConf.select(cfg, path, default=None)
        if value is None and path != "peft.lr":
            continue  # a setting this run does not have
        rate = _number(value)
        if rate is None or not math.isfinite(rate) or rate <= 0:
            raise PolicyError(f"refused: the run asks {path}={value!r}; a site trains only with a positive "
                              f"learning rate ({NOTHING})")
    rounds, steps = OmegaConf.select(cfg, "federation.rounds"), OmegaConf.select(cfg, "federation.local_steps")
    if int(rounds) > 0 and int(steps) < 1:
        raise PolicyError(f"refused: the run asks federation.local_steps={steps} over {rounds} round(s); {NOTHING}")
    if int(rounds) > 0 and str(OmegaConf.select(cfg, "peft.name")) == "none":
        raise PolicyError(f"refused: the run trains peft=none (no parameter) over {rounds} round(s); {NOTHING}")


def check_round(policy: SitePolicy, ins: Any) -> None:
    """One train message's own budget (the coordinator may send other figures than its hello's)."""
    if ins.steps < 1:
        raise PolicyError(f"refused: round {ins.round} asks {ins.steps} local steps; {NOTHING}")
    check_value(policy, "max_local_steps", "the round's steps", ins.steps)
    check_value(policy, "max_rounds", "the round's total rounds", ins.rounds)
    if not 1 <= ins.round <= ins.rounds:
        raise PolicyError(f"refused: the message is round {ins.round} of {ins.rounds}")


def check_trainable(names: Any) -> None:
    """The built PEFT spec trains something (`peft=petite` is known only with the backbone)."""
    if not names:
        raise PolicyError(f"refused: the run's PEFT spec trains no parameter of this backbone; {NOTHING}")
