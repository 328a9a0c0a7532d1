"""Federated PEFT: a core without Flower — `server/` (the coordinator's half), `site/` (a site's half),
and what both speak at this level (messages, transport, strategies, sharing) — and its Flower edge
(`flower/`: the apps and the wire codec)."""
