"""Flower adapter of the federation core: the apps, records and the SecAgg+ workflow."""
