"""Every PEFT method and every Mix-PEFT combination, on every backbone's tiny preset.

Parametrized over the registries, so that no method or combination can be forgotten.
"""

from __future__ import annotations

import copy

import pytest
import torch

from petite_fl.errors import ConfigError
from petite_fl.models.base import SiteKind
from petite_fl.models.registry import available_backbones, build_backbone
from petite_fl.peft.apply import adapter_state_dict, apply_peft, count_parameters, load_adapter_state, merge_peft
from petite_fl.peft.base import Method
from petite_fl.peft.registry import available_methods, get_method
from petite_fl.peft.spec import PeftSpec, feasible_mixes, spec_from_config

BACKBONES = available_backbones()
SINGLE = [m for m in available_methods() if m != "none"] + ["petite"]
# Non-cubic (position-embedding interpolation, strides); CVT needs 64 so that its deepest
# stage keeps several keys (with one key, attention ignores q and k altogether).
SIZE = {"unetr": (32, 32, 16), "cvtgan": (64, 64, 32)}


def _specs() -> list[tuple[str, dict]]:
    cases = []
    for backbone in BACKBONES:
        model = build_backbone(backbone, "tiny")
        cases += [(backbone, {"name": m}) for m in SINGLE]
        cases += [(backbone, {"name": "mix", "encoder": s.encoder, "decoder": s.decoder, "bitfit": True})
                  for s in feasible_mixes(model)]
        cases.append((backbone, FFA))
    return cases


FFA = {"name": "lora", "args": {"lora": {"ffa": True}}}  # FFA-LoRA: A frozen, B trained
CASES = _specs()
IDS = [f"{b}-{c['name']}" + (f"-{c['encoder']}+{c['decoder']}" if c["name"] == "mix" else "")
       + ("-ffa" if c is FFA else "") for b, c in CASES]


def _covering(cases: list[tuple[str, dict]]) -> set[int]:
    """Indices of every single method plus, per backbone, mixes that put each method in each
    position (encoder, decoder) at least once: the code paths of all mixes, in few of them."""
    keep, seen = set(), set()
    for i, (backbone, cfg) in enumerate(cases):
        if cfg["name"] != "mix":
            keep.add(i)
        elif {(backbone, "e", cfg["encoder"]), (backbone, "d", cfg["decoder"])} - seen:
            keep.add(i)
            seen |= {(backbone, "e", cfg["encoder"]), (backbone, "d", cfg["decoder"])}
    return keep


# The costly per-model checks run on the covering cases by default; the other mixes are
# marked slow (run them with -m slow). The cheap checks above and below take every case.
_COVER = _covering(CASES)
COSTLY = [pytest.param(*c, id=i, marks=() if k in _COVER else pytest.mark.slow)
          for k, (c, i) in enumerate(zip(CASES, IDS, strict=True))]


def test_the_paper_rules_give_12_cvtgan_and_9_unetr_combinations():
    counts = {b: len(feasible_mixes(build_backbone(b, "tiny"))) for b in BACKBONES}
    assert counts == {"cvtgan": 12, "unetr": 9}


def _prepared(backbone: str, cfg: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = build_backbone(backbone, "tiny")
    with torch.no_grad():  # as if pretrained: no exactly-zero layer (the tiny UNETR's residual head)
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    spec = spec_from_config(cfg, model)
    return model, apply_peft(model, spec)


def _randomise(model, state) -> None:
    """Give every trainable tensor a non-trivial value (zero-initialised ones included)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in state.names:
            params[name].add_(0.05 * torch.randn_like(params[name]))


@pytest.mark.parametrize("backbone, cfg", CASES, ids=IDS)
def test_a_training_step_changes_only_the_method_parameters(backbone, cfg):
    model, state = _prepared(backbone, cfg)
    _randomise(model, state)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n not in state.trainable}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if n in state.trainable}
    assert trainable, "a fine-tuning spec must train something"
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.rand(2, 1, *SIZE[backbone])
    loss = torch.nn.functional.mse_loss(model(x), x)
    loss.backward()
    opt.step()
    after = dict(model.named_parameters())
    for name, before in frozen.items():
        assert torch.equal(after[name], before), f"backbone tensor {name} changed"
    changed = [n for n, before in trainable.items() if not torch.equal(after[n], before)]
    assert len(changed) == len(trainable), f"not updated: {sorted(set(trainable) - set(changed))[:5]}"


@pytest.mark.parametrize("backbone, cfg", COSTLY)
def test_saved_adapter_reloads_onto_a_fresh_backbone_and_reproduces_the_output(backbone, cfg):
    torch.manual_seed(0)
    model = build_backbone(backbone, "tiny")
    backbone_file = copy.deepcopy(model.state_dict())  # what a backbone file holds
    state = apply_peft(model, spec_from_config(cfg, model))
    _randomise(model, state)
    tensors = adapter_state_dict(model, state)
    x = torch.rand(1, 1, *SIZE[backbone])
    model.eval()
    expected = model(x)

    torch.manual_seed(123)  # a different initialisation: only the files carry the weights
    fresh = build_backbone(backbone, "tiny")
    fresh.load_state_dict(backbone_file)
    fresh_state = apply_peft(fresh, state.spec)
    load_adapter_state(fresh, fresh_state, tensors)
    fresh.eval()
    assert torch.equal(fresh(x), expected)


@pytest.mark.parametrize("backbone, cfg", COSTLY)
def test_every_counted_parameter_can_change_the_output(backbone, cfg):
    # In float64, a dead parameter (e.g. a shift of every attention key, which the softmax
    # cancels, or a conv bias an instance norm removes) gets a gradient of round-off size
    # (< 1e-13); a live one, with the zero-initialised tensors randomised, far more.
    if cfg["name"] == "full":
        pytest.skip("full fine-tuning counts the backbone itself")
    model, state = _prepared(backbone, cfg)
    model.double().eval()
    _randomise(model, state)
    x = torch.rand(1, 1, *SIZE[backbone], dtype=torch.float64)
    out = model(x)
    (out * torch.randn_like(out)).sum().backward()
    params = dict(model.named_parameters())
    dead = [n for n in state.names if params[n].grad is None or float(params[n].grad.abs().max()) < 1e-10]
    assert not dead, f"counted but cannot change the output: {dead[:5]}"


@pytest.mark.parametrize("backbone, cfg", COSTLY)
def test_merging_keeps_the_output(backbone, cfg):
    model, state = _prepared(backbone, cfg)
    _randomise(model, state)
    model.eval()
    x = torch.rand(1, 1, *SIZE[backbone])
    expected = model(x)
    merge_peft(model, state)
    torch.testing.assert_close(model(x), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_injection_alone_does_not_change_the_output(backbone):
    """Zero-initialised LoRA B, adapter up-projections, SSF identity, BitFit zero deltas.

    (VPT is the exception by design: its prompts are extra tokens from the start.)
    """
    torch.manual_seed(1)
    model = build_backbone(backbone, "tiny")
    model.eval()
    x = torch.rand(1, 1, *SIZE[backbone])
    expected = model(x)
    for cfg in ({"name": "mix", "encoder": "lora", "decoder": "ssf"},
                {"name": "mix", "encoder": "ssf", "decoder": "adapter"}):
        fresh = build_backbone(backbone, "tiny")
        fresh.load_state_dict(model.state_dict())
        apply_peft(fresh, spec_from_config(cfg, fresh))
        fresh.eval()
        torch.testing.assert_close(fresh(x), expected)


@pytest.mark.parametrize(
    "backbone, cfg, fragment",
    [
        ("unetr", {"name": "mix", "encoder": "lora", "decoder": "vpt"}, "cannot go on the decoder of unetr"),
        ("unetr", {"name": "mix", "encoder": "lora", "decoder": "lora"}, "different methods"),
        ("cvtgan", {"name": "mix", "encoder": "prefix", "decoder": "lora"}, "is not a method"),
        ("cvtgan", {"name": "mix", "encoder": "bitfit", "decoder": "lora"}, "is not additive"),
        ("unetr", {"name": "lora", "args": {"lora": {"rank": 4}}}, r"unknown argument\(s\) \['rank'\]"),
        ("unetr", {"name": "lora", "args": {"adapter": {"reduction": 4}}}, "unused method"),
        ("unetr", {"name": "dora"}, "unknown PEFT method 'dora'"),
        ("unetr", {"name": "lora", "args": {"lora": {"r": 0}}}, "r must be at least 1"),
        ("cvtgan", {"name": "adapter", "args": {"adapter": {"reduction": 0}}}, "reduction must be at least 1"),
    ],
)
def test_infeasible_specs_are_refused_saying_why_and_what_is_allowed(backbone, cfg, fragment):
    with pytest.raises(ConfigError, match=fragment) as info:
        spec_from_config(cfg, build_backbone(backbone, "tiny"))
    if "cannot go" in fragment:
        assert "allowed on the decoder of unetr: lora, adapter, ssf" in str(info.value)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_methods_are_placed_by_site_kind_so_a_new_method_needs_no_backbone_edit(backbone):
    model = build_backbone(backbone, "tiny")
    for name in available_methods():  # every kind a method asks for is offered by every backbone
        method = get_method(name)
        if method.site_kind is not None:
            assert method.parts(model), f"{backbone} offers no {method.site_kind} place for {name}"

    class ResidualProbe(Method):  # a new method, unregistered: the backbone knows only kinds
        name = "probe"
        site_kind = SiteKind.BLOCK_OUTPUT

    probe = ResidualProbe()
    assert probe.parts(model) == ("encoder", "decoder")
    assert probe.sites(model, "decoder") == get_method("adapter").sites(model, "decoder")


def test_paper_size_counts_match_the_paper_where_it_counts_honestly():
    with torch.device("meta"):
        unetr = build_backbone("unetr", "paper")
    state = apply_peft(unetr, spec_from_config({"name": "lora"}, unetr))
    trainable, total = count_parameters(unetr, state)
    assert trainable == 147_456  # LoRA r4 on q and k of 12 layers of width 768
    assert total == pytest.approx(101.7e6, rel=0.01)


def test_spec_round_trips_through_a_dict():
    spec = PeftSpec("mix", "lora", "ssf", True, {"lora": {"r": 8}})
    assert PeftSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("backbone", BACKBONES)
def test_ffa_lora_trains_and_stores_only_b_and_every_party_rebuilds_the_same_a(backbone):
    def build(seed):
        torch.manual_seed(seed)  # the global RNG differs between parties; A must not
        model = build_backbone(backbone, "tiny")
        return model, apply_peft(model, spec_from_config(FFA, model))

    (m1, s1), (m2, _) = build(0), build(99)
    plain = apply_peft(build_backbone(backbone, "tiny"), spec_from_config({"name": "lora"}, m1))
    assert s1.names and all("lora_B" in n for n in s1.names)
    assert sorted(n.replace("lora_B", "lora_A") for n in s1.names) == sorted(n for n in plain.names if "lora_A" in n)
    a1 = {n: p for n, p in m1.named_parameters() if "lora_A" in n}
    a2 = dict(m2.named_parameters())
    assert a1 and all(not p.requires_grad and torch.equal(p, a2[n]) for n, p in a1.items())
    assert all(p.abs().max() > 0 for p in a1.values())  # a random A, not zeros
    # A is not counted as trainable, nor as backbone
    trainable, total = count_parameters(m1, s1)
    assert trainable == sum(p.numel() for n, p in m1.named_parameters() if "lora_B" in n)
    assert total == sum(p.numel() for p in build_backbone(backbone, "tiny").parameters())
