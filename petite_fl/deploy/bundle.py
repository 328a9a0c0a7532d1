"""A Flower app bundle (FAB, a zip) measured before anything reads it.

A coordinator's bundle reaches a site as bytes; a 1 MiB zip can hold a pyproject.toml that
unpacks to 1 GiB, and Flower's SuperNode reads that file (the run config) before any check
of the site's. So a site first reads only the zip's central directory: the bundle's size,
the entry count, each entry's name, sizes and compression ratio, and their totals, against
the site's `bundle_limits`; then the app hash (`deploy.approval`); only then Flower. Every
entry is afterwards read as a stream that never yields more than the site's bound, and that
must unpack to exactly the size its header declares.

Why hand-written: Flower 1.42 bounds the bundle's compressed size only (10 MB, at the
SuperLink, which is the coordinator's) and nothing unpacked.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from petite_fl.errors import ConfigError

MiB = 1 << 20
#: entries smaller than this are not held to the ratio (a short file of spaces compresses 60×)
RATIO_FLOOR = 64 << 10
_CHUNK = 64 << 10


class BundleRefused(ValueError):
    """A bundle over a site's bounds or malformed; its message says what and by how much."""


@dataclass(frozen=True)
class BundleLimits:
    """A site's bounds on a bundle (site config `bundle_limits`). petite-fl's own app bundles to
    about 1 KiB (2 entries, 0.9 KiB unpacked); the defaults leave room for a reviewed app of
    a few hundred source files."""

    max_bytes: int = 2 * MiB       # the zip as received
    max_unpacked: int = 16 * MiB   # all entries, unpacked
    max_entry: int = 4 * MiB       # one entry, unpacked
    max_entries: int = 512
    max_ratio: float = 100.0       # unpacked / compressed, per entry (above RATIO_FLOOR) and in total

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, where: str) -> BundleLimits:
        """The site config's `bundle_limits` (null: the defaults); ConfigError in one line."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: bundle_limits must be a mapping of {', '.join(f.name for f in fields(cls))}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: bundle_limits: unknown key(s) {', '.join(map(str, unknown))} "
                              f"(allowed: {', '.join(sorted(known))})")
        for key, value in data.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{where}: bundle_limits.{key} must be a positive number, got {value!r}"[:200])
            if key != "max_ratio" and int(value) != value:
                raise ConfigError(f"{where}: bundle_limits.{key} must be a whole number, got {value!r}")
        return cls(**{k: (float(v) if k == "max_ratio" else int(v)) for k, v in data.items()})

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BundleLimits:
        return cls.from_mapping(json.loads(text), "bundle limits")


def _bad_name(name: str) -> str | None:
    """Why an entry name could land outside the app folder (or be misread); None if it is plain."""
    if name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
        return "is absolute or holds a backslash"
    if any(part == ".." for part in name.split("/")):
        return "climbs out with '..'"
    if not name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "is empty or holds control characters"
    return None


def _over(what: str, size: int, limit: float, key: str) -> BundleRefused:
    return BundleRefused(f"its bundle {what} {size} bytes, over the site's limit of {int(limit)} (bundle_limits.{key})")


def measure(bundle: bytes, limits: BundleLimits) -> list[zipfile.ZipInfo]:
    """The bundle's entries from its central directory alone (nothing unpacked), checked against
    `limits`; BundleRefused names the first bound crossed."""
    if len(bundle) > limits.max_bytes:
        raise _over("is", len(bundle), limits.max_bytes, "max_bytes")
    try:
        with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, ValueError, EOFError, OSError) as exc:
        raise BundleRefused(f"not a Flower app bundle ({type(exc).__name__}: {exc})"[:300]) from None
    if len(infos) > limits.max_entries:
        raise BundleRefused(f"its bundle has {len(infos)} entries, over the site's limit of {limits.max_entries} "
                            "(bundle_limits.max_entries)")
    for info in infos:
        shown = repr(info.filename[:80])
        if (why := _bad_name(info.filename)) is not None:
            raise BundleRefused(f"its bundle entry {shown} {why}")
        if info.file_size > limits.max_entry:
            raise _over(f"entry {shown} unpacks to", info.file_size, limits.max_entry, "max_entry")
        if info.file_size > RATIO_FLOOR and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise BundleRefused(f"its bundle entry {shown} unpacks {info.file_size / max(info.compress_size, 1):.0f}× "
                                f"its compressed size, over the site's limit of {limits.max_ratio:g}× "
                                "(bundle_limits.max_ratio)")
    unpacked, packed = sum(i.file_size for i in infos), sum(i.compress_size for i in infos)
    if unpacked > limits.max_unpacked:
        raise _over("unpacks to", unpacked, limits.max_unpacked, "max_unpacked")
    if unpacked > RATIO_FLOOR and unpacked > limits.max_ratio * max(packed, 1):
        raise BundleRefused(f"its bundle unpacks {unpacked / max(packed, 1):.0f}× its compressed size, over the "
                            f"site's limit of {limits.max_ratio:g}× (bundle_limits.max_ratio)")
    return infos


def read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> Iterator[bytes]:
    """One entry's bytes as a stream of chunks, never more than `cap` and never more than its
    header declares in all; BundleRefused if it unpacks to another size than declared."""
    bound, seen = min(cap, info.file_size), 0
    with archive.open(info) as member:
        while chunk := member.read(min(_CHUNK, bound - seen + 1)):
            seen += len(chunk)
            if seen > bound:
                raise BundleRefused(f"its bundle entry {info.filename[:80]!r} unpacks to more than "
                                    f"{'its header declares' if bound == info.file_size else f'{cap} bytes'}")
            yield chunk
    if seen != bound:
        raise BundleRefused(f"its bundle entry {info.filename[:80]!r} unpacks to {seen} bytes, not the "
                            f"{info.file_size} its header declares")
