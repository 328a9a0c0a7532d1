"""Server side of petite-fl: the Flower ServerApp (wiring) and the coordinator's kit."""
