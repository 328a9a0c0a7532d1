"""User-facing errors: the CLIs print these as one line, without a traceback."""

from __future__ import annotations


class PetiteError(Exception):
    """A problem the user can fix (bad input, configuration or environment)."""


class ConfigError(PetiteError):
    """A configuration file, field or override is wrong."""


class DataError(PetiteError):
    """A data set, manifest or image file is wrong."""


class PolicyError(PetiteError):
    """A site's own policy refuses what the coordinator asks (the message names the policy line)."""
