"""The CVT-GAN generator and discriminator: size, shapes, global residual, parts and PEFT sites."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from petite_fl.models.base import PromptSlot, Site, SiteKind
from petite_fl.models.cvtgan import PRESETS, CvTGAN
from petite_fl.models.cvtgan_discriminator import CvTGANDiscriminator, build_discriminator
from petite_fl.models.registry import build_backbone


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture
def tiny() -> CvTGAN:
    torch.manual_seed(0)
    return CvTGAN(**PRESETS["tiny"])


def test_paper_preset_has_the_papers_28_7_million_parameters_within_5_percent():
    with torch.device("meta"):
        gen = CvTGAN(**PRESETS["paper"])
    assert abs(n_params(gen) - 28.7e6) <= 0.05 * 28.7e6


def test_tiny_preset_counts_the_same_on_meta_and_cpu_and_is_under_a_million():
    with torch.device("meta"):
        meta = CvTGAN(**PRESETS["tiny"])
    cpu = CvTGAN(**PRESETS["tiny"])
    assert n_params(meta) == n_params(cpu) < 1_000_000


def test_registry_builds_the_tiny_preset_and_config_holds_every_constructor_argument():
    gen = build_backbone("cvtgan", "tiny")
    assert isinstance(gen, CvTGAN) and gen.name == "cvtgan" and gen.size_multiple == 16
    assert gen.config == PRESETS["tiny"]
    assert n_params(CvTGAN(**gen.config)) == n_params(gen)


@pytest.mark.parametrize("shape", [(2, 1, 32, 32, 32), (1, 1, 32, 32, 16), (1, 1, 16, 16, 16)])
def test_tiny_forward_returns_the_input_shape_for_cubic_and_non_cubic_inputs(tiny, shape):
    assert tiny(torch.rand(shape)).shape == shape


def test_zeroing_the_last_head_conv_makes_the_output_exactly_the_input(tiny):
    out = tiny.decoder["head"].out
    with torch.no_grad():
        out.weight.zero_()
        out.bias.zero_()
    x = torch.rand(2, 1, 32, 32, 16)
    assert torch.equal(tiny(x), x)


def test_every_parameter_belongs_to_exactly_one_non_empty_part(tiny):
    parts = tiny.part_modules()
    counts = {part: 0 for part in parts}
    for name, _ in tiny.named_parameters():
        owners = [p for p, prefixes in parts.items() if any(name == q or name.startswith(q + ".") for q in prefixes)]
        assert len(owners) == 1, name
        assert tiny.part_of(name) == owners[0]
        counts[owners[0]] += 1
    assert set(counts) == {"encoder", "decoder"} and all(counts.values())


def test_peft_site_names_exist_and_have_the_expected_types_and_counts(tiny):
    modules = dict(tiny.named_modules())
    n_blocks = {"encoder": 1 + 2 + 2, "decoder": 2 + 1}
    for part, blocks in n_blocks.items():
        lora = tiny.peft_sites(SiteKind.LINEAR, part)
        assert len(lora) == 3 * blocks
        assert all(isinstance(modules[name], nn.Linear) for name in lora)
        assert {name.rsplit(".", 1)[1] for name in lora} == {"to_q", "to_k", "to_v"}

        adapters = tiny.peft_sites(SiteKind.BLOCK_OUTPUT, part)
        assert len(adapters) == blocks and all(isinstance(s, Site) and s.layout == "tokens" for s in adapters)
        assert all(modules[s.module].fc2.out_features == s.channels for s in adapters)

        slots = tiny.peft_sites(SiteKind.PROMPT, part)
        assert len(slots) == blocks and all(isinstance(s, PromptSlot) for s in slots)
        assert all(hasattr(modules[s.module], "vpt_prompts") and modules[s.module].to_k.in_features == s.dim
                   for s in slots)

        ssf = tiny.peft_sites(SiteKind.LAYER_OUTPUT, part)
        assert ssf and all(s.module in modules for s in ssf)
        for s in ssf:
            m = modules[s.module]
            assert s.layout == ("tokens" if isinstance(m, (nn.Linear, nn.LayerNorm)) else "channels")
            assert not (isinstance(m, nn.Conv3d) and m.groups > 1)  # depthwise projections are skipped

        norms = tiny.peft_sites(SiteKind.NORM, part)
        assert norms and all(isinstance(modules[n], (nn.LayerNorm, nn.InstanceNorm3d)) for n in norms)
        assert all(tiny.part_of(n + ".weight") == part for n in norms + lora)
        with pytest.raises(ValueError, match="'lora' is not a valid SiteKind"):  # kinds, not method names
            tiny.peft_sites("lora", part)

    # the paper's prompt tokens per stage: encoder 0/8/32 (depths 1/2/2), decoder 32/8 (depths 2/1)
    assert [s.tokens for s in tiny.peft_sites(SiteKind.PROMPT, "encoder")] == [0, 8, 8, 32, 32]
    assert [s.tokens for s in tiny.peft_sites(SiteKind.PROMPT, "decoder")] == [32, 32, 8]
    assert tiny.peft_defaults("lora", "encoder") == {"r": 8, "alpha": 16}
    assert tiny.peft_defaults("adapter", "decoder") == {"reduction": 8}
    assert tiny.peft_defaults("vpt", "encoder") == {"tokens": [0, 8, 32]}
    assert tiny.peft_defaults("vpt", "decoder") == {"tokens": [32, 8]}
    assert tiny.peft_defaults("ssf", "decoder") == {}


def test_vpt_prompts_on_one_attention_change_the_output_and_receive_gradients(tiny):
    x = torch.rand(1, 1, 32, 32, 16)
    before = tiny(x).detach()
    slot = tiny.peft_sites(SiteKind.PROMPT, "decoder")[0]
    attn = tiny.get_submodule(slot.module)
    assert attn.vpt_prompts is None
    attn.vpt_prompts = nn.Parameter(torch.randn(slot.tokens, slot.dim))
    assert f"{slot.module}.vpt_prompts" in dict(tiny.named_parameters())
    after = tiny(x)
    assert not torch.allclose(after, before)
    after.square().mean().backward()
    assert attn.vpt_prompts.grad is not None and attn.vpt_prompts.grad.abs().sum() > 0


def test_discriminator_gives_a_patch_logit_map_and_the_tiny_width_is_small():
    disc = build_discriminator("tiny")
    assert isinstance(disc, CvTGANDiscriminator) and n_params(disc) < 100_000
    x, y = torch.rand(2, 1, 32, 32, 32), torch.rand(2, 1, 32, 32, 32)
    logits = disc(x, y)
    assert logits.shape == (2, 1, 4, 4, 4)
    assert torch.equal(logits, disc(torch.cat([x, y], dim=1)))
    with torch.device("meta"):
        assert n_params(build_discriminator("paper")) < 5_000_000
