"""What a site tells the coordinator when it does not answer: a line built from a whitelist, never
from an exception's text.

An exception's text may hold what must not leave the site: a manifest path such as
`PET Studies/DOE John 1957-03-02/early.nii.gz`, a Windows or relative path, a subject's name, a
value from a header. No redaction of that text can know every shape of it, so nothing of it
travels. The line for the coordinator is made only of:
- the site's name, when it is one plain name (the coordinator registered it);
- `PetiteError.public`, where the error was built from safe parts only (a policy refusal: the
  policy's own values and the run's settings; a name the coordinator itself sent);
- otherwise the error's class, the kinds of problem it names from a fixed list (`KINDS`), its
  manifest rows (`PetiteError.rows`) and the run-config keys it names (petite-fl's own schema);
- for any other exception, its class only.
The whole text (and a traceback for an unexpected exception) goes to the site's own log (stderr).
"""

from __future__ import annotations

import re
import sys
import traceback
from functools import lru_cache

from petite_fl.console import printable
from petite_fl.errors import PetiteError

#: the longest line a site sends (a policy refusal fits; a hostile run name is cut)
LIMIT = 400
#: where the whole text is: the site's own log (its operator's terminal or log file)
WHERE = "the whole error is in the site's own log"
#: kinds of problem a site may name, as petite-fl's own messages word them (fixed text only)
KINDS = (
    "manifest not found", "file not found", "not a JSON manifest", "not valid JSON", "is not JSON",
    "the manifest lists no subjects", "duplicate subject", "unknown split", "missing field", "must be a file path",
    "not a NIfTI file", "cannot read the NIfTI header", "a 3D volume is required", "give one 3D volume",
    "truncated or corrupt image data", "differs from", "affines differ", "NaN", "all zeros", "the volume is constant",
    "labels must be 0", "no voxel labelled", "subjects are invalid", "has no 'train' subjects",
    "has no 'val' subjects", "has no 'test' subjects", "no 'scanner' field", "unknown key", "unknown section",
    "holds an interpolation", "must be a whole number", "no personal state", "missed the run's hello",
)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}|partition \d{1,6}")  # a simulated node without a site: its partition
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


@lru_cache(maxsize=1)
def _config_keys() -> tuple[str, ...]:
    """Dotted keys of petite-fl's own configs, longest first (a field name the coordinator may read)."""
    from petite_fl.federation.site.runkeys import known_keys

    return tuple(sorted((k for k in known_keys() if "." in k), key=len, reverse=True))


def site_label(name: str | None) -> str:
    """The site's name as the coordinator reads it: a plain name, never a path (a simulated site may be a
    manifest's path)."""
    return f"site {name}" if name and _PLAIN_NAME.fullmatch(name) and name not in (".", "..") else "a site"


def _class_name(exc: BaseException) -> str:
    name = type(exc).__name__
    return name if _IDENTIFIER.fullmatch(name) else "Exception"


def _fields(text: str) -> list[str]:
    """The run-config keys `text` names (whole keys only), in the order of the schema."""
    found: list[str] = []
    for key in _config_keys():
        if key in text and re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", text) \
                and not any(f.startswith(key + ".") for f in found):
            found.append(key)
    return found[:4]


def describe(exc: BaseException) -> str:
    """The public description of `exc` (without the site's name): see the module's docstring."""
    if isinstance(exc, PetiteError) and exc.public:
        return exc.public
    if not isinstance(exc, PetiteError):
        return f"site error: {_class_name(exc)} ({WHERE})"
    text = str(exc)
    parts = [k for k in KINDS if re.search(rf"(?<!\w){re.escape(k)}(?!\w)", text)][:3]
    rows = sorted(set(exc.rows))
    if rows:
        shown = ", ".join(map(str, rows[:10])) + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")
        parts.append(f"manifest row{'s' if len(rows) > 1 else ''} {shown}")
    fields = _fields(text)
    if fields:
        parts.append(f"field{'s' if len(fields) > 1 else ''} {', '.join(fields)}")
    return f"refused ({_class_name(exc)}{': ' + '; '.join(parts) if parts else ''}); {WHERE}"


def for_coordinator(exc: BaseException, site: str | None) -> str:
    """One printable line for the coordinator, about `exc` at `site` (nothing of its text unless public)."""
    return printable(f"{site_label(site)}: {describe(exc)}", LIMIT)


def report(exc: BaseException, site: str | None) -> str:
    """Log `exc` whole at the site (stderr; a traceback for anything but a PetiteError) and return the line
    the coordinator may read."""
    line = f"site {site}: {exc}" if isinstance(exc, PetiteError) else f"site {site} failed: {type(exc).__name__}: {exc}"
    print(line, file=sys.stderr, flush=True)  # the site's log: the whole line, paths included
    if not isinstance(exc, PetiteError):
        traceback.print_exception(exc, file=sys.stderr)
    return for_coordinator(exc, site)
