"""petite-fl's built-in Hydra configuration groups, shipped as package data.

A package (not a plain folder) so that Hydra finds it as `pkg://petite_fl.configs` in an
installed wheel as well as in a checkout.
"""
