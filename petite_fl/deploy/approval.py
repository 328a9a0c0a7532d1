"""Which Flower apps a site runs: an app is known by the hash of its files, and a site runs
only the apps it approved (petite-fl's own app as installed at the site, and the hashes listed
in `approved_apps` of its site config).

The coordinator's `flwr run` ships an app bundle (FAB: a zip of the app folder) that every
SuperNode would install and import; without this check, a coordinator could put any code
into it and have it run inside every hospital. The bundle is measured first
(`deploy.bundle`): nothing of it is unpacked before its sizes are within the site's bounds.
"""

from __future__ import annotations

import hashlib
import io
import re
import tomllib
import zipfile
import zlib
from collections.abc import Iterable

from petite_fl.console import printable
from petite_fl.deploy.bundle import BundleLimits, BundleRefused, measure, read_entry
from petite_fl.errors import ConfigError, PetiteError

#: what an app hash looks like (sha256, lower-case hex)
HASH = re.compile(r"[0-9a-f]{64}")
#: reading a bundle fails in these ways (a damaged or hostile zip)
_UNREADABLE = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError, OSError,
               ValueError, KeyError, zlib.error)
#: the most of pyproject.toml the refusal line's name is read from
_DESCRIBE_CAP = 64 << 10


class AppNotApproved(PetiteError):
    """An app the site has not approved; its message is the site's one-line refusal."""


def app_hash(bundle: bytes, limits: BundleLimits | None = None) -> str:
    """The app's identity: sha256 over its bundle's members, in archive order, each as its name
    and the sha256 of its uncompressed bytes.

    Not Flower's FAB hash (the sha256 of the zip's bytes): the compressed bytes depend on the
    zlib build (zlib-ng deflates the same file differently from zlib 1.2/1.3), so one app would
    have two FAB hashes on a coordinator and a site built differently; its files have one hash.
    Names and contents are exactly what Flower's installer extracts; the order is Flower's
    (sorted, fixed), and an order-sensitive digest leaves no two archives that extract
    differently with the same hash. With `limits`, the bundle is measured first (`bundle.measure`);
    every entry is read as a stream that must unpack to the size its header declares. Raises
    ValueError (BundleRefused for a bound) if the bundle is not a readable zip within them.
    """
    if limits is not None:
        measure(bundle, limits)
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
            for info in archive.infolist():
                member = hashlib.sha256()
                for chunk in read_entry(archive, info, limits.max_entry if limits else info.file_size):
                    member.update(chunk)
                name = info.filename.encode("utf-8")
                digest.update(len(name).to_bytes(4, "big") + name + member.digest())
    except BundleRefused:
        raise
    except _UNREADABLE as exc:
        raise ValueError(f"not a Flower app bundle ({type(exc).__name__}: {exc})"[:300]) from None
    return digest.hexdigest()


def describe(bundle: bytes) -> str:
    """'publisher/name version' from the bundle's pyproject.toml (its first 64 KiB at most), for the
    refusal line; never raises."""
    try:
        with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
            text = b"".join(read_entry(archive, archive.getinfo("pyproject.toml"), _DESCRIBE_CAP))
        config = tomllib.loads(text.decode("utf-8"))
        name = f"{config['tool']['flwr']['app']['publisher']}/{config['project']['name']}"
        return printable(f"'{name}' {config['project']['version']}", 120)  # the coordinator's text: escaped
    except (*_UNREADABLE, tomllib.TOMLDecodeError, TypeError, UnicodeDecodeError):
        return "an unnamed app"


def check_app(bundle: bytes, approved: Iterable[str], site: str, limits: BundleLimits | None = None) -> str:
    """The bundle's app hash if `site` approved it; otherwise AppNotApproved with one line.
    The bundle is measured against `limits` (default: `BundleLimits()`) before anything of it is read."""
    try:
        digest = app_hash(bundle, BundleLimits() if limits is None else limits)
    except ValueError as exc:
        raise AppNotApproved(f"site {site}: refused the app the coordinator sent: {printable(exc, 300)}; nothing of "
                             "it was installed or run") from None
    if digest not in set(approved):
        raise AppNotApproved(
            f"site {site}: refused app {describe(bundle)} with app hash {digest}: it is neither petite-fl's own "
            "app as installed at this site nor listed in approved_apps of the site config; nothing of it was "
            "installed or run (to approve it: `petite-client approve --app DIR` on the reviewed app folder)")
    return digest


def approved_apps(value: object, where: str) -> tuple[str, ...]:
    """A site config's `approved_apps` (null or a list of app hashes), checked; ConfigError in one line."""
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else [value]
    bad = [str(v) for v in items if not (isinstance(v, str) and HASH.fullmatch(v))]
    if not isinstance(value, list | tuple) or bad:
        shown = ", ".join(repr(b)[:80] for b in bad) or repr(value)[:80]
        raise ConfigError(f"{where}: approved_apps must be a list of app hashes (64 lower-case hex characters, as "
                          f"`petite-client approve --app DIR` prints); got {shown}")
    return tuple(dict.fromkeys(items))

