"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def private_dir(path: str | os.PathLike[str]) -> Path:
    """A folder only its owner may enter (0700): a site's or the server's state. Files written
    anywhere under it by `atomic_path` are 0600."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


def is_private(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is (or would be) inside a `private_dir`: what is written there must stay 0600."""
    return _under_private(Path(path))


def _under_private(folder: Path) -> bool:
    for f in (folder, *folder.parents):
        try:
            if f.stat().st_mode & 0o077 == 0:
                return True
        except FileNotFoundError:
            continue  # not made yet: what it will be under decides
        except OSError:
            return False
    return False


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable: without it a crash can bring the old file back."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform or file system without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str], mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step.

    `mode` (e.g. 0o600 for private keys) replaces the default: 0600 under a `private_dir`,
    else 0666 minus the umask. The file and then its folder are fsync'd.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffixes (e.g. .nii.gz) so that writers that dispatch on them work.
    suffix = "".join(target.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600 (and some writers recreate the file): give normal permissions.
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o600 if _under_private(target.parent) else 0o666 & ~umask
        os.chmod(tmp, mode)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON atomically, pretty-printed and key-sorted for stable diffs."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    """Write rows as CSV atomically; the header is every key, in order of first appearance."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
