"""Federated PEFT: a core without Flower (messages, coordinator, site, strategies) and its Flower adapter."""
