"""What leaves a site: one sharing rule by part and PEFT method; sample-weighted averaging."""

from __future__ import annotations

import pytest
import torch

from petite_fl.errors import ConfigError, PetiteError
from petite_fl.federation.aggregate import payload_bytes, weighted_average
from petite_fl.federation.sharing import SharingRule
from petite_fl.models.registry import build_backbone
from petite_fl.peft.apply import adapter_state_dict, apply_peft
from petite_fl.peft.naming import method_of
from petite_fl.peft.spec import spec_from_config


@pytest.fixture(scope="module")
def petite_unetr():
    model = build_backbone("unetr", "tiny")
    state = apply_peft(model, spec_from_config({"name": "petite"}, model))
    return model, state


def test_every_trainable_tensor_is_attributed_to_its_method(petite_unetr):
    _, state = petite_unetr
    methods = {method_of(n) for n in state.names}
    assert methods == {"lora", "ssf", "bitfit"}


@pytest.mark.parametrize(
    "rule, shared_parts, shared_methods",
    [
        ({"share": ["*"]}, {"encoder", "decoder"}, {"lora", "ssf", "bitfit"}),  # fedavg
        ({"share": ["encoder/*"]}, {"encoder"}, {"lora", "bitfit"}),  # shared encoder
        ({"share": []}, set(), set()),  # local
        ({"share": ["*/*"], "keep_local": ["*/ssf", "*/bitfit"]}, {"encoder"}, {"lora"}),  # FedBN-style
    ],
    ids=["fedavg", "shared-encoder", "local", "fedbn-style"],
)
def test_sharing_rules_split_shared_from_personal(petite_unetr, rule, shared_parts, shared_methods):
    _, state = petite_unetr
    shared, personal = SharingRule.from_config(rule).split(state.trainable)
    assert set(shared) | set(personal) == set(state.names) and not set(shared) & set(personal)
    assert {state.trainable[n] for n in shared} == shared_parts
    assert {method_of(n) for n in shared} == shared_methods


def test_under_the_shared_encoder_rule_no_decoder_tensor_is_shared(petite_unetr):
    _, state = petite_unetr
    shared, personal = SharingRule.from_config({"share": ["encoder/*"]}).split(state.trainable)
    assert all(state.trainable[n] == "encoder" for n in shared)
    assert any(state.trainable[n] == "decoder" for n in personal)


@pytest.mark.parametrize("text, fragment", [("middle/*", "unknown part"), ("encoder/dora", "unknown PEFT method")])
def test_bad_selectors_are_refused(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        SharingRule.from_config({"share": [text]})


def test_weighted_average_weights_by_sample_count():
    a = {"w": torch.tensor([0.0, 2.0]), "b": torch.tensor([1.0])}
    b = {"w": torch.tensor([3.0, 5.0]), "b": torch.tensor([4.0])}
    out = weighted_average([(a, 1), (b, 2)])
    torch.testing.assert_close(out["w"], torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(out["b"], torch.tensor([3.0]))


@pytest.mark.parametrize(
    "updates, fragment",
    [
        ([({"w": torch.zeros(2)}, 1), ({"v": torch.zeros(2)}, 1)], "the others lack"),
        ([({"w": torch.zeros(2)}, 1), ({"w": torch.zeros(3)}, 1)], "shape"),
        ([({"w": torch.zeros(2)}, 0)], "non-positive"),
        ([], "no updates"),
    ],
)
def test_inconsistent_updates_are_refused(updates, fragment):
    with pytest.raises(PetiteError, match=fragment):
        weighted_average(updates)


def test_payload_bytes_count_tensor_data(petite_unetr):
    model, state = petite_unetr
    tensors = adapter_state_dict(model, state)
    assert payload_bytes(tensors) == 4 * sum(t.numel() for t in tensors.values())
