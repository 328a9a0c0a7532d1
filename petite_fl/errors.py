"""User-facing errors: the CLIs print these as one line, without a traceback.

An error a site raises may be told to the coordinator, which must never read the site's paths or
subject names in it: what travels is built from `public` (a text made only of the site's policy and
the run's own settings) and `rows` (manifest row numbers), never from the message itself
(`federation.site.outgoing_errors`). The whole message stays in the site's own log.
"""

from __future__ import annotations

from collections.abc import Iterable


class PetiteError(Exception):
    """A problem the user can fix (bad input, configuration or environment).

    `public`: what a site may tell the coordinator about it, when every part of it is safe by
    construction (policy values, the run's own settings, names the coordinator sent); None: only
    the kind of error, its manifest `rows` and the config field names it mentions travel."""

    def __init__(self, *args: object, public: str | None = None, rows: Iterable[int] = ()) -> None:
        super().__init__(*args)
        self.public = public
        self.rows = tuple(int(r) for r in rows)


class ConfigError(PetiteError):
    """A configuration file, field or override is wrong."""


class DataError(PetiteError):
    """A data set, manifest or image file is wrong."""


class PolicyError(PetiteError):
    """A site's own policy refuses what the coordinator asks (the message names the policy line).

    Its text is built from the policy's own values and the run's settings only (`SitePolicy.refusal`),
    so it travels to the coordinator whole: operators read which policy line refused what."""

    def __init__(self, *args: object, public: str | None = None, rows: Iterable[int] = ()) -> None:
        super().__init__(*args, public=public if public is not None else " ".join(map(str, args)), rows=rows)
