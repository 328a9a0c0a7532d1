"""How much each site may count: influence that cannot be bought by a claim.

A site's training weight (FedAvg) and its share of a reported mean (its evaluation subjects)
are its own claims. Here they are bounded by what the coordinator's operator attests out of
band: `petite-server register --max-train-weight N --max-eval-count N` (kept in the site
table beside the site's key), the run's `federation.attested` mapping, or, in a simulation
(no site table), the sizes of the synthetic data the run's own config defines
(`federation.attested: synthetic`). A site weighs min(declared, attested); a site with no
attested figure weighs `federation.unattested_weight` (`uniform`: 1, so a claim buys nothing;
`declared`: its own claim, for a federation whose sites are all trusted).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from petite_fl.errors import ConfigError

UNATTESTED = ("uniform", "declared")
SPLITS = ("val", "test")


@dataclass(frozen=True)
class Attested:
    """What the operator vouches for: the most a site trains on and evaluates on (per split)."""

    train: int | None = None
    eval: Mapping[str, int] = field(default_factory=dict)  # split → most subjects
    source: str = ""

    def merged(self, other: Attested) -> Attested:
        """Both bounds hold: the smaller of each figure."""
        def low(a: int | None, b: int | None) -> int | None:
            return b if a is None else a if b is None else min(a, b)
        splits = set(self.eval) | set(other.eval)
        return Attested(low(self.train, other.train), {s: low(self.eval.get(s), other.eval.get(s)) for s in splits},
                        " and ".join(s for s in (self.source, other.source) if s))


def whole(value: Any, what: str) -> int:
    """A positive whole number, or one line naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive whole number, got {value!r}")
    return value


def from_registry(entry: Mapping[str, Any], site: str) -> Attested | None:
    """A site table entry's attestation (`petite-server register --max-train-weight/--max-eval-count`)."""
    train, count = entry.get("max_train_weight"), entry.get("max_eval_count")
    if train is None and count is None:
        return None
    where = f"the site table's entry for {site}"
    return Attested(None if train is None else whole(train, f"{where}: max_train_weight"),
                    {} if count is None else dict.fromkeys(SPLITS, whole(count, f"{where}: max_eval_count")),
                    "petite-server register")


def from_config(cfg: DictConfig, sites: list[str], registry_kept: bool) -> dict[str, Attested]:
    """federation.attested: `synthetic` (a simulation's own data sizes; not where a site table is kept,
    since deployed sites hold their own data), `none`, or {site: {train: N, eval: N}}."""
    setting = cfg.federation.get("attested", "synthetic")
    if isinstance(setting, DictConfig):
        setting = OmegaConf.to_container(setting, resolve=True)
    if setting is None or setting == "none":
        return {}
    if setting == "synthetic":
        return {} if registry_kept else _synthetic(cfg, sites)
    if not isinstance(setting, dict):
        raise ConfigError(f"federation.attested must be synthetic, none or {{site: {{train: N, eval: N}}}}, "
                          f"got {setting!r}")
    out = {}
    for site, figures in setting.items():
        if site not in sites:
            raise ConfigError(f"federation.attested names site '{site}', which is not in federation.sites {sites}")
        if not isinstance(figures, dict) or not figures or set(figures) - {"train", "eval"}:
            raise ConfigError(f"federation.attested.{site} must hold train and/or eval, got {figures!r}")
        train, count = figures.get("train"), figures.get("eval")
        out[site] = Attested(None if train is None else whole(train, f"federation.attested.{site}.train"),
                             {} if count is None else dict.fromkeys(SPLITS, whole(count, f"federation.attested.{site}"
                                                                                        ".eval")),
                             "federation.attested")
    return out


def _synthetic(cfg: DictConfig, sites: list[str]) -> dict[str, Attested]:
    """The split sizes of every site that is a scanner of the run's synthetic data set (known before
    any is generated: the run's own config defines them)."""
    from petite_fl.data.sites import is_scanner, split_counts

    out = {}
    for site in sites:
        if is_scanner(site) and site in cfg.data.synth.scanners:
            counts, _ = split_counts(cfg, site)
            out[site] = Attested(counts.get("train") or None,
                                 {s: counts[s] for s in SPLITS if counts.get(s)}, "the synthetic data's sizes")
    return out


class Influence:
    """Each site's training weight and evaluation weight: min(declared, attested), or the default."""

    def __init__(self, attested: Mapping[str, Attested], unattested: Any = "uniform") -> None:
        unattested = str(unattested)
        if unattested not in UNATTESTED:
            raise ConfigError(f"federation.unattested_weight must be one of {', '.join(UNATTESTED)}, "
                              f"got '{unattested}'")
        self.attested, self.unattested = dict(attested), unattested

    def _bound(self, figure: int | None, declared: int) -> int:
        if figure is not None:
            return max(1, min(int(declared), figure))
        return int(declared) if self.unattested == "declared" else 1

    def train(self, site: str, declared: int) -> int:
        return self._bound(self.attested.get(site, Attested()).train, declared)

    def eval(self, site: str, split: str, declared: int) -> int:
        return self._bound(self.attested.get(site, Attested()).eval.get(split), declared)

    def train_line(self, site: str, declared: int) -> str:
        """`site`: declared → attested → used, for the run's console and log."""
        a = self.attested.get(site)
        attested = (f"attested {a.train} ({a.source})" if a and a.train is not None
                    else f"unattested (federation.unattested_weight={self.unattested})")
        evals = ", ".join(f"{s} ≤ {n}" for s, n in sorted(a.eval.items())) if a and a.eval else ""
        return (f"{site} declared {declared}, {attested}, weighs {self.train(site, declared)}"
                + (f"; evaluation subjects {evals}" if evals else ""))


    def summary(self, declared: Mapping[str, int]) -> dict[str, dict[str, Any]]:
        """Per site, for the run's summary: declared, attested (None: unattested) and used."""
        out = {}
        for site, n in sorted(declared.items()):
            a = self.attested.get(site, Attested())
            out[site] = {"train_declared": n, "train_attested": a.train, "train_used": self.train(site, n),
                         "eval_attested": dict(a.eval) or None, "attested_by": a.source or None,
                         "unattested_weight": self.unattested}
        return out


def influence_for(cfg: DictConfig, sites: list[str], registry: Mapping[str, Attested] | None) -> Influence:
    """The run's bounds: the site table's (where the coordinator keeps one) and the run config's; where
    both attest a figure, the smaller holds."""
    attested = from_config(cfg, sites, registry is not None)
    for site, a in (registry or {}).items():
        attested[site] = attested[site].merged(a) if site in attested else a
    return Influence(attested, cfg.federation.get("unattested_weight", "uniform"))
