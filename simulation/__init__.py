"""Entry points of a checkout (`python -m simulation.<name>`); the code is in petite_fl.experiments."""
