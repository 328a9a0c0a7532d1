"""The server half of a federated run: the coordinator, its rounds, checks, checkpoint, run log,
final evaluation, protections, and the arms of a comparison. Flower-free (its edge: `federation.flower`)."""
