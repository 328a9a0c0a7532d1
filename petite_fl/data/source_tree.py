"""An import reads only inside the source tree the user named: no symbolic link is followed out of it.

A link in a DICOM folder, a BIDS image or sidecar, or an ECAT file that points elsewhere (another
patient's study, a system file) would otherwise be read, and its data imported, by whoever
reads the series: pydicom, dcm2niix (which follows links itself) or nibabel. So links are
looked at without being followed, and a series a reader would read through one is skipped with
one line naming the link relative to the source. Links that stay inside the tree (a BIDS
dataset managed by git-annex is made of them) are read as before. A DICOM series is its files
wherever they lie (#28): it is skipped when a link out lies beside one of them, since that link
may be one of its files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path
from typing import Protocol


class SeriesFiles(Protocol):
    """A series read from its own files wherever they lie (a DICOM series grouped by UID, #28)."""

    files: tuple[Path, ...]

    def label_in(self, top: Path) -> str: ...


Source = Path | SeriesFiles


def source_top(src: Path) -> Path:
    """The folder every read must stay in: the source folder, or a source file's own folder."""
    src = Path(src).resolve()
    return src if src.is_dir() else src.parent


def stays_in(path: Path, top: Path) -> bool:
    """True unless `path` is a symbolic link whose target (followed to the end) lies outside `top`, or loops."""
    if not path.is_symlink():
        return True
    try:
        return path.resolve().is_relative_to(top)
    except (OSError, RuntimeError):  # a loop of links: nothing to read there
        return False


def links_out(path: Source, top: Path) -> list[Path]:
    """The links a reader of `path` would follow out of `top`, found without following any.

    A reader of a folder reads everything under it; a reader of a file also reads its
    companions (same name up to the first dot: a BIDS sidecar); a link above it counts too.
    A series of files counts the links beside its files too: one of them may be a file of it.
    """
    if not isinstance(path, Path):
        return _beside(path.files, top)
    for step in (*reversed(path.parents), path):
        if step != top and step.is_relative_to(top) and not stays_in(step, top):
            return [step]
    entries = _under(path) if path.is_dir() else _companions(path)
    return [p for p in entries if not stays_in(p, top)]


def screen(src: Path, sources: list[Source]) -> tuple[list[Source], list[str]]:
    """The found `sources` that read nothing out of the tree, and one line per series or folder refused."""
    top = source_top(src)
    every = set(links_out(Path(src).resolve(), top))
    kept, lines, seen = [], [], set()
    for source in sources:
        hits = links_out(source, top)
        seen.update(hits)
        if hits:
            lines.append(refusal(hits, top, source))
        else:
            kept.append(source)
    strays = sorted(every - seen, key=lambda p: (p.parent, p.name))  # links that no found series reads
    for _, links in groupby(strays, key=lambda p: p.parent):
        lines.append(refusal(list(links), top))
    return kept, lines


def refusal(links: list[Path], top: Path, source: Source | None = None) -> str:
    """One line: the first link relative to the source, how many more, and the series it stops."""
    first = _relative(links[0], top)
    more = f" (and {len(links) - 1} more)" if len(links) > 1 else ""
    name = _relative(source, top) if isinstance(source, Path) else source.label_in(top) if source else ""
    stopped = f"; series {name} skipped" if source is not None and source != links[0] else ""
    return f"{first}: a symbolic link to outside the source folder{more}; not followed{stopped}"


def _relative(path: Path, top: Path) -> str:
    return str(path.relative_to(top)) if path.is_relative_to(top) else str(path)


def _under(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):  # os.walk does not descend into linked folders
        yield from (Path(root) / name for name in (*dirs, *files))


def _beside(files: tuple[Path, ...], top: Path) -> list[Path]:
    """Links out among the entries of the folders holding `files` (not below them: other series lie there)."""
    hits: list[Path] = []
    for folder in sorted({f.parent for f in files}):
        try:
            hits += sorted(p for p in folder.iterdir() if not stays_in(p, top))
        except OSError:
            continue
    return hits


def _companions(path: Path) -> list[Path]:
    stem = path.name.split(".")[0]
    try:
        return [p for p in path.parent.iterdir() if p.name.split(".")[0] == stem]
    except OSError:
        return [path]
