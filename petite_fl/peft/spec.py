"""PEFT specs: a single method, Mix-PEFT (encoder method + decoder method + BitFit), or a reference.

Mix-PEFT (PETITE): one *additive* method on the encoder and a *different* one on the
decoder, plus optional BitFit everywhere. Feasibility comes from where each method can
go on the backbone (`Method.sites`, the backbone's places of the method's `SiteKind`):
UNETR's CNN decoder has no prompt slots (no VPT), so UNETR has 4 × 3 − 3 = 9
combinations and CVT-GAN 4 × 4 − 4 = 12: 21 in all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from petite_fl.config import hydra_override
from petite_fl.errors import ConfigError
from petite_fl.models.base import Backbone
from petite_fl.peft.registry import additive_methods, available_methods, get_method

#: The PETITE paper's best Mix-PEFT per backbone (Kim, Choi, Hwang, MICCAI 2024).
PETITE_CHOICE = {"unetr": ("lora", "ssf"), "cvtgan": ("vpt", "lora")}


@dataclass(frozen=True)
class PeftSpec:
    """What to train. `kind`: none | full | single | mix."""

    kind: str
    encoder: str | None = None
    decoder: str | None = None
    bitfit: bool = False
    args: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.kind in ("none", "full"):
            return self.kind
        if self.kind == "single":
            return self.encoder or self.decoder or ("bitfit" if self.bitfit else "layernorm")
        return f"{self.encoder}+{self.decoder}" + ("+bitfit" if self.bitfit else "")

    def methods(self) -> list[str]:
        used = [m for m in (self.encoder, self.decoder) if m]
        return list(dict.fromkeys(used + (["bitfit"] if self.bitfit else [])))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "encoder": self.encoder, "decoder": self.decoder,
                "bitfit": self.bitfit, "args": {k: dict(v) for k, v in self.args.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeftSpec:
        args = {k: dict(v) for k, v in (data.get("args") or {}).items()}
        return cls(kind=data["kind"], encoder=data.get("encoder"), decoder=data.get("decoder"),
                   bitfit=bool(data.get("bitfit", False)), args=args)


def spec_from_config(peft_cfg: Any, backbone: Backbone) -> PeftSpec:
    """Build and check a spec from the `peft` config group against a backbone."""
    cfg = dict(peft_cfg)
    name = str(cfg.get("name", ""))
    args = {str(k): dict(v or {}) for k, v in dict(cfg.get("args") or {}).items()}
    if name == "petite":
        if backbone.name not in PETITE_CHOICE:
            raise ConfigError(f"peft=petite: no PETITE choice recorded for backbone '{backbone.name}'")
        enc, dec = PETITE_CHOICE[backbone.name]
        spec = PeftSpec("mix", enc, dec, bool(cfg.get("bitfit", True)), args)
    elif name == "mix":
        spec = PeftSpec("mix", cfg.get("encoder"), cfg.get("decoder"), bool(cfg.get("bitfit", True)), args)
    elif name in ("none", "full"):
        spec = PeftSpec(name, args=args)
    elif name == "bitfit":
        spec = PeftSpec("single", bitfit=True, args=args)
    elif name in available_methods():
        parts = get_method(name).parts(backbone)
        single_parts = backbone.single_method_parts.get(name, parts)
        spec = PeftSpec("single", name if "encoder" in single_parts else None,
                        name if "decoder" in single_parts else None, False, args)
    else:
        known = ", ".join([*available_methods(), "mix", "petite"])
        raise ConfigError(f"peft.name: unknown PEFT method '{name}' (known: {known})")
    check_spec(spec, backbone)
    return spec


def config_overrides(spec: PeftSpec) -> list[str]:
    """Hydra overrides of the `peft` group that `spec_from_config` turns back into `spec` (an adapter file's
    spec as a run's config: a site builds its PEFT from the config, never from a file). Callers check
    the round trip on the backbone: a spec no config can express is refused there, not guessed."""
    if spec.kind in ("none", "full"):
        out = [f"peft={spec.kind}"]
    elif spec.kind == "mix":
        out = ["peft=mix", f"peft.encoder={spec.encoder}", f"peft.decoder={spec.decoder}",
               f"peft.bitfit={'true' if spec.bitfit else 'false'}"]
    else:
        out = [f"peft={spec.label}"]
    return out + [f"++peft.args.{method}.{key}={_hydra_value(value)}"
                  for method, given in sorted(spec.args.items()) for key, value in sorted(given.items())]


def _hydra_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    return hydra_override("x", value)[2:]


def check_spec(spec: PeftSpec, backbone: Backbone) -> None:
    """Refuse infeasible specs, saying why and what is allowed."""
    if spec.kind == "mix":
        additive = additive_methods()
        for part in ("encoder", "decoder"):
            method = getattr(spec, part)
            allowed = [m for m in additive if get_method(m).sites(backbone, part)]
            if method not in allowed:
                why = ("is not a method" if method not in available_methods() else
                       "is not additive" if method not in additive else f"cannot go on the {part} of {backbone.name}")
                raise ConfigError(
                    f"Mix-PEFT {part}='{method}' {why} (allowed on the {part} of {backbone.name}: {', '.join(allowed)})"
                )
        if spec.encoder == spec.decoder:
            raise ConfigError(
                f"Mix-PEFT needs different methods on encoder and decoder, got '{spec.encoder}' on both "
                f"(use peft={spec.encoder} for the single method)"
            )
    unused = sorted(set(spec.args) - set(spec.methods()))
    if unused:
        raise ConfigError(f"PEFT arguments given for unused method(s) {unused} (spec uses {spec.methods() or 'none'})")
    for method in spec.methods():  # unknown argument names are refused here
        for part in ("encoder", "decoder"):
            get_method(method).parse_args(backbone, part, spec.args.get(method, {}))


def feasible_mixes(backbone: Backbone) -> list[PeftSpec]:
    """Every Mix-PEFT combination the backbone allows, with BitFit (the paper's rule)."""
    additive = additive_methods()
    encoders = [m for m in additive if get_method(m).sites(backbone, "encoder")]
    decoders = [m for m in additive if get_method(m).sites(backbone, "decoder")]
    return [PeftSpec("mix", e, d, True) for e in encoders for d in decoders if e != d]
