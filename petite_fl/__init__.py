"""petite-fl: federated parameter-efficient fine-tuning of 3D PET-to-PET networks."""

from petite_fl.errors import ConfigError, DataError, PetiteError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "PetiteError", "__version__"]
