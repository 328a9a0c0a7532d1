"""Flower ClientApp for `flwr run .` from a checkout: the installed package's app (one scanner site)."""

from petite_fl.federation.flower.app import client_app as app

__all__ = ["app"]
