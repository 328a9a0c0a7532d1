"""What a site does with the adapters it holds: their model cards, the catalog of a site's
adapters, a standalone merged export, and inference with a site's own adapter."""
