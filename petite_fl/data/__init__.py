"""PET data: the synthetic five-scanner generator, NIfTI site manifests and loaders."""
