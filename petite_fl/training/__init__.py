"""Single-site training, inference and evaluation (no Flower here)."""
