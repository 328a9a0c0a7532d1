"""Flower ServerApp for `flwr run .` from a checkout: the installed package's app."""

from petite_fl.federation.flower.app import server_app as app

__all__ = ["app"]
