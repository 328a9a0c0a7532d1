"""16-bit transport of the PEFT tensors: what travels, what comes back, what is refused."""

from __future__ import annotations

import pytest
import torch

from petite_fl.config import compose
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.federation.flower.records import from_record, to_record


@pytest.mark.parametrize("transport, wire, half", [("float32", "float32", torch.float32),
                                                   ("float16", "float16", torch.float16),
                                                   ("bfloat16", "int16", torch.bfloat16)])
def test_tensors_travel_in_the_transport_precision_and_come_back_as_float32(transport, wire, half):
    tensors = {"a": torch.randn(64, 32), "b": torch.linspace(-3, 3, 700)}  # beyond the .npy headers
    record = to_record(tensors, transport)
    assert {str(arr.dtype) for arr in record.values()} == {wire}
    back = from_record(record, transport)
    for name, t in tensors.items():
        assert back[name].dtype == torch.float32
        assert torch.equal(back[name], t.to(half).float())  # exactly the rounding, nothing else
    if transport != "float32":
        assert record.count_bytes() < 0.6 * to_record(tensors).count_bytes()


def test_a_tensor_sent_in_another_precision_is_refused_by_name():
    with pytest.raises(PetiteError, match=r"tensor 'a' travelled as torch.float32, not as float16"):
        from_record(to_record({"a": torch.ones(3)}), "float16")
    with pytest.raises(PetiteError, match="not as bfloat16"):
        from_record(to_record({"a": torch.ones(3)}, "float16"), "bfloat16")


def test_bad_transport_settings_are_refused_naming_the_field():
    from petite_fl.federation.server.coordinator import Coordinator

    with pytest.raises(ConfigError, match=r"federation\.transport: 'int8' is not one of"):
        Coordinator(compose("config", ["federation.transport=int8"]), transport=None)
    with pytest.raises(ConfigError, match="SecAgg\\+ quantizes itself"):
        Coordinator(compose("config", ["strategy=fedavg", "federation.transport=float16",
                                       "federation.secagg.enabled=true"]), transport=None)
