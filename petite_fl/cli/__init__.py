"""Command-line entry points (thin wiring over the library)."""
