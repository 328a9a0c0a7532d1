"""`personalized`: Ditto (Li, Hu, Beirami, Smith, ICML 2021) on PEFT tensors.

Each site keeps a personal adapter v that never leaves it, and helps train a global
adapter w by FedAvg. In a round, the site first trains w from the received global
(uploaded, optionally with FedProx μ), then trains v on  loss(v) + λ/2‖v − w_global‖²,
so a scanner with little or unusual data is pulled toward what the others learned, as
much as λ says. The site evaluates and keeps v. To compare at the same local-step budget,
a round's steps are split between w and v (`ditto.global_fraction`, default one half).
"""

from __future__ import annotations

from petite_fl.errors import ConfigError
from petite_fl.federation.strategies.base import LocalTraining, Strategy, Update, proximal
from petite_fl.federation.strategies.registry import register


@register
class Personalized(Strategy):
    algorithm = "personalized"

    def __init__(self, cfg):
        super().__init__(cfg)
        ditto = cfg.get("ditto") or {}
        self.lam = float(ditto.get("lam", 0.1))
        self.global_fraction = float(ditto.get("global_fraction", 0.5))
        if self.lam < 0:
            raise ConfigError(f"strategy.ditto.lam must be ≥ 0, got {self.lam}")
        if not 0.0 < self.global_fraction < 1.0:
            raise ConfigError(f"strategy.ditto.global_fraction must be in (0, 1), got {self.global_fraction}")
        if not self.rule.share:
            raise ConfigError("strategy 'personalized' needs a shared global adapter: strategy.sharing.share is empty")

    def current_adapter(self, init, received, personal):
        # v: the personal adapter; before the first round it starts from the global one.
        return dict(personal) if personal else {**init, **received}

    def global_steps(self, steps: int) -> int:
        return max(1, round(steps * self.global_fraction))

    def upload_steps(self, rnd: int, steps: int, total_rounds: int) -> list[tuple[int, int, int]]:
        g = self.global_steps(steps)  # only the global adapter w is uploaded
        return [((rnd - 1) * g, g, total_rounds * g)]

    def local_update(self, job: LocalTraining, init, received, personal) -> Update:
        global_steps = self.global_steps(job.steps)
        personal_steps = max(1, job.steps - global_steps)
        v = self.current_adapter(init, received, personal)
        # 1) the global adapter w, from what the server sent (tensors it does not hold: v's)
        job.load({**v, **received})
        w_loss = job.train(global_steps, proximal(received, self.proximal_mu),
                           (job.round - 1) * global_steps, job.total_rounds * global_steps)
        upload = {n: t for n, t in job.read().items() if n in received}
        # 2) the personal adapter v, pulled toward the global w the round started from
        job.load(v)
        v_loss = job.train(personal_steps, proximal(received, self.lam),
                           (job.round - 1) * personal_steps, job.total_rounds * personal_steps)
        return Update(upload, job.read(), {"train_loss": v_loss, "global_train_loss": w_loss})

    def describe(self) -> str:
        return super().describe() + f"; Ditto λ={self.lam:g}, {self.global_fraction:.0%} of steps on the global"
