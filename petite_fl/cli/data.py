"""`petite-data`: make the synthetic five-scanner data set, import a site's own PET, check a site, list scanners."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from petite_fl.config import compose
from petite_fl.console import console, human_bytes, one_line, run_cli
from petite_fl.data.check import SiteReport, check_site
from petite_fl.data.importer import ImportReport, import_from_pacs, import_site, parse_splits
from petite_fl.data.synthetic import SynthSpec, dataset_dir, disk_size, generate
from petite_fl.errors import ConfigError, DataError
from petite_fl.scanners import available_scanners, get_scanner

PROG = "petite-data"
#: an import line is printed as one printable line (a header's escape codes never reach the terminal)
LINE_LIMIT = 2000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="generate (or reuse) the synthetic five-scanner data set")
    synth.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=paper data.synth.seed=7")
    synth.add_argument("--subjects", type=int, help="subjects per scanner (45 = paper protocol)")
    synth.add_argument("--out", type=Path, help="parent folder (default: data.root from the config)")
    synth.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    synth.add_argument("--force", action="store_true", help="regenerate even if the data is current")

    imp = sub.add_parser("import", help="turn a site's dynamic PET (DICOM, ECAT 7, BIDS-PET) into a site")
    imp.add_argument("src", type=Path, nargs="?",
                     help="a download folder, a DICOMDIR, a .v file or a BIDS-PET root (or --from-pacs)")
    imp.add_argument("--from-pacs", metavar="URL|SITE",
                     help="retrieve the series from a PACS instead: https://host/dicom-web (DICOMweb), "
                          "dicom://CALLED_AE@host:port (DIMSE), or a site config with a pacs: block")
    imp.add_argument("--query", nargs="+", metavar="KEY=VALUE",
                     help="--from-pacs: the series to bring, as DICOM keywords, e.g. Modality=PT StudyDate=2024")
    imp.add_argument("--out", type=Path, required=True, help="the site folder to make")
    imp.add_argument("--site", help="site name in the manifest (default: the --out folder's name)")
    imp.add_argument("--scanner", help="registered scanner profile (default: matched by matrix and voxel size)")
    imp.add_argument("--splits", default="train=0.7,val=0.1,test=0.2", help="split weights, e.g. train=2,val=0,test=1")
    imp.add_argument("--seed", type=int, default=0, help="seed of the split shuffle")
    imp.add_argument("--input-minutes", type=float, default=5.0, help="short-scan length from the first frame")
    imp.add_argument("--frames", type=int, default=6, help="frames a series must have")
    imp.add_argument("--float32", action="store_true", help="write float32 NIfTI (default int16 with a slope)")
    imp.add_argument("--dry-run", action="store_true", help="list what would be made; write nothing")

    check = sub.add_parser("check", help="validate a site manifest and its NIfTI files")
    check.add_argument("manifest", type=Path)

    sub.add_parser("scanners", help="list the registered scanners and their acquisition model")
    return parser


def _synth_overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.subjects is not None:
        overrides += _paper_like_splits(args.subjects)
    if args.out is not None:
        overrides.append(f"data.root={args.out.expanduser().resolve()}")
    if args.workers is not None:
        overrides.append(f"data.synth.workers={args.workers}")
    return overrides


def _paper_like_splits(n: int) -> list[str]:
    """Splits for N subjects in the proportions of the paper protocol (30/5/10 of 45)."""
    if n < 3:
        return [f"data.synth.subjects={n}", f"data.synth.splits={{train:{n},val:0,test:0}}"]
    val, test = max(1, round(n * 5 / 45)), max(1, round(n * 10 / 45))
    return [f"data.synth.subjects={n}", f"data.synth.splits={{train:{n - val - test},val:{val},test:{test}}}"]


def cmd_synth(args: argparse.Namespace) -> int:
    cfg = compose(overrides=_synth_overrides(args))
    spec = SynthSpec.from_config(cfg.data.synth)
    out = dataset_dir(cfg.data)
    total = len(spec.scanners) * spec.subjects
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task(f"synthesising {total} subject scans", total=total)
        info, made = generate(spec, out, workers=int(cfg.data.synth.workers), force=args.force,
                              on_subject=lambda _: progress.advance(task))
    seconds = time.perf_counter() - start
    _print_dataset(info, out)
    size = human_bytes(disk_size(out))
    if made:
        console.print(f"generated {total} subject scans in {seconds:.1f} s, {size} at {escape(str(out))}")
    else:
        console.print(f"data set is up to date at {escape(str(out))} ({size}): nothing to do "
                      "(--force regenerates)")
    return 0


def _print_dataset(info: dict[str, Any], out: Path) -> None:
    table = Table(title=f"synthetic PET data set '{out.name}' (seed {info['spec']['seed']})")
    numbers = ("counts/voxel", "subjects' counts", "noise in/tgt", "size")
    for col in ("scanner", "vendor / site", "matrix", "voxel mm", "FWHM mm", "counts/voxel", "subjects' counts",
                "train/val/test", "noise in/tgt", "size"):
        table.add_column(col, justify="right" if col in numbers else "left")
    for name, s in info["scanners"].items():
        subjects = [r for r in info["subjects"] if r["scanner"] == name]
        splits = "/".join(str(sum(r["split"] == k for r in subjects)) for k in ("train", "val", "test"))
        ratio = sum(r["noise_ratio"] for r in subjects) / len(subjects)
        acq = s["acquisition"]
        levels = [r["counts_per_voxel"] for r in subjects if "counts_per_voxel" in r]
        table.add_row(
            name, f"{s['vendor']} / {s['site']}", "×".join(map(str, s["matrix"])),
            "×".join(f"{v:.4g}" for v in s["voxel_mm"]), "×".join(f"{v:g}" for v in acq["fwhm_mm"]),
            f"{acq['counts_per_voxel']:g}", f"{min(levels):.3g}–{max(levels):.3g}" if levels else "–",
            splits, f"{ratio:.3f}",
            human_bytes(disk_size(out / name)),
        )
    console.print(table)
    console.print("counts/voxel: the scanner's reference patient (185 MBq, 75 kg, 30 min); subjects' counts: "
                  "the range drawn (dose, weight, uptake time). noise in/tgt: RMS error to the noise-free "
                  "image, input over target, in the head (expected √6 ≈ 2.449 for 1 frame vs the mean of 6)")


def cmd_check(args: argparse.Namespace) -> int:
    report = check_site(args.manifest)
    _print_report(report)
    return 0 if report.ok else 1


def _print_report(report: SiteReport) -> None:
    if report.rows:
        table = Table(title=f"site '{report.site}' — {escape(str(report.manifest))}")
        for col in ("subject", "split", "shape", "voxel mm", "input range", "target range"):
            table.add_column(col)
        for r in report.rows:
            table.add_row(
                str(r["id"]), str(r["split"]), "×".join(map(str, r["shape"])),
                "×".join(f"{v:g}" for v in r["voxel_mm"]),
                "{:.4g} – {:.4g}".format(*r["input_range"]), "{:.4g} – {:.4g}".format(*r["target_range"]),
            )
        console.print(table)
    if report.counts:
        console.print("subjects per split: " + ", ".join(f"{k} {v}" for k, v in report.counts.items()))
    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    if report.ok:
        console.print(f"[green]OK[/]: {len(report.rows)} subjects valid")
        return
    console.print(f"[bold red]{len(report.problems)} problem(s) found:[/]")
    for problem in report.problems:
        console.print(f"  [red]✗[/] {escape(problem)}", soft_wrap=True)


def cmd_scanners(_: argparse.Namespace) -> int:
    table = Table(title="registered scanners (petite_fl/configs/scanner/*.yaml)")
    for col in ("scanner", "vendor / site", "matrix", "voxel mm", "patch", "FWHM mm",
                "counts/voxel", "recon (noise |k|^p)"):
        table.add_column(col)
    for name in available_scanners():
        s = get_scanner(name)
        a = s.acquisition
        table.add_row(name, f"{s.vendor} / {s.site}", "×".join(map(str, s.matrix)),
                      "×".join(f"{v:.4g}" for v in s.voxel_mm), "×".join(map(str, s.patch)),
                      "×".join(f"{v:g}" for v in a.fwhm_mm), f"{a.counts_per_voxel:g}",
                      f"{a.recon.algorithm} (p={a.recon.noise_ramp:g})")
    console.print(table)
    for name in available_scanners():
        for field, why in get_scanner(name).rationale.items():
            console.print(f"  {name}.{field}: {escape(why)}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    splits = parse_splits(args.splits)
    if (args.src is None) == (args.from_pacs is None):
        raise ConfigError("import: give a source folder or file, or --from-pacs URL --query KEY=VALUE…, not both")
    if args.from_pacs is None and args.query:
        raise ConfigError("import: --query belongs to --from-pacs")
    source = args.src if args.src is not None else args.from_pacs
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("importing series", total=None)
        options = dict(
            site=args.site, scanner=args.scanner, splits=splits, seed=args.seed,
            dry_run=args.dry_run, input_minutes=args.input_minutes, expect_frames=args.frames,
            dtype="float32" if args.float32 else "int16",
            on_found=lambda n: progress.update(task, total=n),
            on_subject=lambda row: progress.update(task, advance=1, description=f"imported {row.get('id', '—')}"),
        )
        if args.from_pacs is None:
            report = import_site(args.src, args.out, **options)
        else:
            from petite_fl.deploy.site import site_pacs  # the site configs: only for a PACS import
            from petite_fl.pacs.series import parse_query
            from petite_fl.pacs.transfer import open_pacs

            pacs = open_pacs(site_pacs(args.from_pacs, where="--from-pacs"))
            source = pacs.label
            progress.update(task, description=f"retrieving from {pacs.label}")
            report = import_from_pacs(pacs, parse_query(args.query or [], "--query"), args.out, **options)
    _print_import(report)
    if not report.imported:
        raise DataError(f"{source}: nothing imported ({len(report.skipped)} series skipped, reasons above)")
    return 0


def _print_import(report: ImportReport) -> None:
    if report.imported:
        table = Table(title=f"site '{report.site}' — {escape(str(report.out))}"
                            + (" (dry run: nothing written)" if report.dry_run else ""))
        for col in ("subject", "split", "source", "notes"):
            table.add_column(col)
        for row in report.imported:
            table.add_row(row["id"], row.get("split", "—"), escape(str(row.get("source", "—"))),
                          str(len(row.get("notes", []))))
        console.print(table)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(one_line(note, LINE_LIMIT))}", soft_wrap=True)
    if report.skipped:
        console.print(f"[bold red]{len(report.skipped)} series skipped:[/]")
        for line in report.skipped:
            console.print(f"  [red]✗[/] {escape(one_line(line, LINE_LIMIT))}", soft_wrap=True)
    if report.imported and not report.dry_run:
        if report.changed:
            console.print(f"imported {len(report.imported)} subjects, scanner "
                          f"{report.scanner or 'unmatched (see scanner-draft.yaml)'}; "
                          f"check with: petite-data check {escape(str(report.out / 'manifest.json'))}")
        else:
            console.print(f"site is up to date at {escape(str(report.out))}: nothing to do")


COMMANDS = {"synth": cmd_synth, "import": cmd_import, "check": cmd_check, "scanners": cmd_scanners}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: COMMANDS[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
