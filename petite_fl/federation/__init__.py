"""Federated PEFT: what is shared, how it is aggregated (Flower wiring lives in server/ and client/)."""
