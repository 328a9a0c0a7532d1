"""A backbone with its adapter folded in: a standalone network under the plain backbone's names.

`merge_peft` folds LoRA, LayerNorm tuning, BitFit and most of SSF into the weights. What
it leaves is handled here with two generic "merge slots" (`models.base.add_merge_slots`):
SSF after a norm without affine parameters (UNETR's instance norms: `norm(x)·s + b` is an
affine norm with weight s and bias b, BitFit's delta after it joins b), and a shift folded
into a layer built without a bias (UNETR's transposed convolutions). Methods that add
computation rather than change weights (bottleneck adapters, prompt tokens) cannot fold and
are refused. The result is checked against backbone + adapter before anyone writes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petite_fl.artifacts import load_adapter, load_backbone
from petite_fl.errors import PetiteError
from petite_fl.models.base import Backbone, add_merge_slots
from petite_fl.models.registry import build_backbone
from petite_fl.peft.apply import apply_peft, load_adapter_state, merge_peft
from petite_fl.peft.spec import PeftSpec

#: methods that add computation no weight can hold, and why (the refusal's words)
NOT_FOLDABLE = {
    "adapter": "its bottlenecks (down-projection, GELU, up-projection) add a nonlinear computation to each block",
    "vpt": "its prompt tokens lengthen the transformer's sequence, which no weight of the plain network can do",
}
#: tensor names only PEFT code makes (the merged file must hold none)
PEFT_NAME = re.compile(r"(^|\.)(lora_[A-Za-z_]+|ln_tuning_layers|base_layer|ssf_scale|ssf_shift|bitfit_delta|"
                       r"vpt_prompts|petite_adapter)(\.|$)")
#: the merged network may differ from backbone + adapter by this share of the output's range
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Merged:
    model: Backbone            # the plain architecture (+ merge slots) with the merged weights
    slots: dict[str, list[str]]
    max_abs_diff: float        # against backbone + adapter on the example input
    output_range: float


def refuse_unfoldable(spec: PeftSpec, adapter: Path | str) -> None:
    for method in spec.methods():
        if method in NOT_FOLDABLE:
            raise PetiteError(f"{adapter}: --merged cannot fold PEFT method '{method}' ({spec.label}): "
                              f"{NOT_FOLDABLE[method]}; export without --merged (backbone + adapter bundle)")


def adapted(backbone: Path, adapter: Path) -> tuple[Backbone, Any, dict[str, Any], dict[str, Any]]:
    """(backbone with the adapter applied, its PEFT state, backbone metadata, adapter metadata)."""
    model, meta = load_backbone(backbone)
    tensors, adapter_meta = load_adapter(adapter, meta)  # refuses another backbone's adapter
    state = apply_peft(model, PeftSpec.from_dict(adapter_meta["peft"]))
    load_adapter_state(model, state, tensors)
    return model.eval(), state, meta, adapter_meta


def merge_adapter(backbone: Path, adapter: Path, example: torch.Tensor | None = None) -> Merged:
    """The standalone merged network, checked against backbone + adapter (refused if they differ)."""
    refuse_unfoldable(PeftSpec.from_dict(load_adapter(adapter)[1]["peft"]), adapter)
    reference, _, meta, _ = adapted(backbone, adapter)
    model, state, _, _ = adapted(backbone, adapter)
    merge_peft(model, state)
    state_dict, affine = _plain_state(model, adapter)
    plain = build_backbone(meta["model"], "paper", **meta["config"])
    slots = _slots(plain, state_dict, affine, adapter)
    add_merge_slots(plain, slots)
    plain.load_state_dict(state_dict, strict=True)
    plain.eval()
    if example is None:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            example = plain.example_input()
    with torch.no_grad():
        want, got = reference(example), plain(example)
    diff = float((want - got).abs().max())
    span = float(want.max() - want.min()) or 1.0
    if not diff <= TOLERANCE * span:
        raise PetiteError(f"{adapter}: the merged network differs from backbone + adapter by {diff:.3g} "
                          f"(output range {span:.3g}, allowed {TOLERANCE:g} of it): not written")
    return Merged(plain, slots, diff, span)


def _plain_state(model: nn.Module, adapter: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The merged weights under the plain names, and the norms that need an affine slot."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    folded: set[str] = set()
    affine: list[str] = []
    for name, module in model.named_modules():
        scale, shift = getattr(module, "ssf_scale", None), getattr(module, "ssf_shift", None)
        if scale is None or (bool((scale == 1).all()) and bool((shift == 0).all())):
            continue
        weight, bias = _fold_after(module, name, adapter)
        plain = name.replace(".base_layer", "")
        state[f"{plain}.weight"], state[f"{plain}.bias"] = weight, bias
        folded.add(name)
        if getattr(module, "weight", None) is None:
            affine.append(plain)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, _, leaf = key.rpartition(".")
        if leaf in ("ssf_scale", "ssf_shift", "bitfit_delta"):
            neutral = bool((tensor == (1 if leaf == "ssf_scale" else 0)).all())
            if module not in folded and not neutral:
                raise PetiteError(f"{adapter}: --merged could not fold '{key}' into the weights of the network")
            continue
        if re.search(r"(^|\.)(lora_[A-Za-z_]+|ln_tuning_layers)\.", key):
            continue  # merged into the base layer by merge_peft
        if PEFT_NAME.search(key.replace(".base_layer.", ".")):
            raise PetiteError(f"{adapter}: --merged could not fold '{key}' into the weights of the network")
        out[key.replace(".base_layer.", ".")] = tensor
    return out, affine


def _fold_after(module: nn.Module, name: str, adapter: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of `module`'s own affine, then SSF's scale/shift, then BitFit's delta."""
    scale, shift = module.ssf_scale.detach(), module.ssf_shift.detach()
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if weight is not None and weight.shape != scale.shape:
        raise PetiteError(f"{adapter}: --merged cannot fold SSF after '{name}' ({type(module).__name__}): "
                          "it has weights, but not one per channel")
    if weight is None and not isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
        raise PetiteError(f"{adapter}: --merged cannot fold SSF after '{name}' ({type(module).__name__}): "
                          "no weight to fold into")
    new_weight = scale.clone() if weight is None else weight.detach() * scale
    new_bias = shift.clone() if bias is None else bias.detach() * scale + shift
    delta = getattr(module, "bitfit_delta", None)
    if delta is not None:  # BitFit's hook runs after SSF's (its merge left it for this case)
        new_bias = new_bias + delta.detach()
    return new_weight, new_bias


def _slots(plain: nn.Module, state: dict[str, torch.Tensor], affine: list[str],
           adapter: Path) -> dict[str, list[str]]:
    """Which plain modules need a slot for the merged tensors; anything else extra is refused."""
    known = set(plain.state_dict())
    modules = dict(plain.named_modules())
    extra = sorted(set(state) - known)
    bias = []
    for key in extra:
        module, _, leaf = key.rpartition(".")
        if module in affine:
            continue
        target = modules.get(module)
        if leaf == "bias" and target is not None and getattr(target, "bias", 1) is None:
            bias.append(module)
            continue
        raise PetiteError(f"{adapter}: --merged made tensor '{key}', which the plain network has no place for")
    missing = sorted(known - set(state))
    if missing:
        raise PetiteError(f"{adapter}: --merged lost tensor(s) {missing[:3]} of the plain network")
    return {k: v for k, v in (("bias", bias), ("affine", sorted(affine))) if v}
