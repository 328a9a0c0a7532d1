"""`petite`: single-site pretrain / finetune / infer / evaluate, and `petite peft list`.

Every command takes Hydra overrides (key=value) after its options, e.g.
`petite finetune target=scanner5 peft=mix peft.encoder=lora peft.decoder=ssf train=tiny`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from petite_fl.cli import adapters as adapters_cli
from petite_fl.config import compose, expand_path
from petite_fl.console import console, run_cli

PROG = "petite"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    over = {"nargs": "*", "help": "Hydra overrides, e.g. model=cvtgan train=tiny source=scanner2"}

    p = sub.add_parser("pretrain", help="full training of a backbone on the source scanner's training split")
    p.add_argument("overrides", **over)
    p.add_argument("--out", type=Path, help="backbone file to write (default: cached by config)")

    p = sub.add_parser("finetune", help="PEFT / Mix-PEFT / full fine-tuning on the target site → adapter")
    p.add_argument("overrides", **over)

    p = sub.add_parser("infer", help="denoise NIfTI scans or DICOM series with a site's adapter "
                                     "(or a backbone + adapter file)",
                       description=INFER_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--site", metavar="SITE",
                   help="the site whose adapter denoises the inputs (its folder under the site root)")
    p.add_argument("--run", default="latest", metavar="latest|NAME",
                   help="the run whose adapter to use (default: latest, the site's most recently finished run)")
    p.add_argument("--site-root", type=Path, metavar="DIR",
                   help="the folder holding the site's folder (default: federation.site_root; a deployed site: "
                        "its cache folder)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="output folder (--site): <name>.nii[.gz] and <name>.json per input")
    p.add_argument("--out-format", choices=("nifti", "dicom", "both"), default=None,
                   help="--site: nifti | dicom (a derived PET series per DICOM input) | both "
                        "(default: nifti for NIfTI inputs, dicom for DICOM inputs)")
    p.add_argument("--input-minutes", type=float, default=5.0, metavar="MIN",
                   help="--site, DICOM inputs: the short scan is the first MIN minutes of the dynamic series "
                        "(as petite-data import; default 5)")
    p.add_argument("--device", metavar="auto|cpu|cuda",
                   help="auto (CUDA when present) | cpu | cuda[:N]; CUDA predicts in mixed precision "
                        "(default: train.device)")
    p.add_argument("--backbone", type=Path, metavar="FILE",
                   help="backbone file (-i form: required; --site: the site's cached copy of the adapter's "
                        "backbone by default, and only that one is taken)")
    p.add_argument("-i", "--input", type=Path, metavar="IN", help="-i form: one input NIfTI (short scan)")
    p.add_argument("-o", "--output", type=Path, metavar="OUT", help="-i form: output NIfTI (input's affine and header)")
    p.add_argument("--adapter", type=Path, metavar="FILE", help="-i form: adapter file (default: none)")
    p.add_argument("items", nargs="*", metavar="IN | KEY=VALUE",
                   help="input NIfTI files, DICOM series (a folder, a DICOMDIR, a DICOM file) and folders (--site), "
                        "and Hydra overrides key=value, in any order")
    p.add_argument("--from-pacs", nargs="?", const="", metavar="URL",
                   help="--site: retrieve the short scan from a PACS instead of IN (https://host/dicom-web, "
                        "dicom://AE@host:port; no URL: the site config's pacs: block)")
    p.add_argument("--to-pacs", nargs="?", const="", metavar="URL",
                   help="--from-pacs: store the derived series on this PACS (default: the one it came from)")
    p.add_argument("--study", metavar="UID", help="--from-pacs: the PET series of this study")
    p.add_argument("--series", metavar="UID", help="--from-pacs: this series")

    p = sub.add_parser("evaluate", help="PSNR / SSIM / NRMSE per subject and mean ± std over a split")
    p.add_argument("--backbone", type=Path, help="default: the one pretrained on `source`")
    p.add_argument("--adapter", type=Path, help="default: none (no fine-tuning)")
    p.add_argument("--site", metavar="SITE", help="scanner name or manifest (default: `target`)")
    p.add_argument("--out", type=Path, help="folder for metrics.csv / metrics.json")
    p.add_argument("overrides", **over)

    p = sub.add_parser("compare", help="the main job: local vs federated PEFT on the five scanners → report "
                                       "(compare=study: a measurement that tells arms apart; compare=paper: GPU)")
    p.add_argument("--arms", help="comma-separated arms (default: compare.default_arms of the preset; every arm "
                                  "is in compare.arms, petite_fl/configs/compare/default.yaml)")
    p.add_argument("--out", type=Path, help="report folder (default: under the cache, by config)")
    p.add_argument("--federation", metavar="NAME",
                   help="run the arms at the deployed coordinator this `flwr` connection names ($FLWR_HOME/"
                        "config.toml; petite-server writes `petite`) instead of Flower's simulation engine")
    p.add_argument("--evaluate", metavar="ADAPTER|backbone",
                   help="no training: evaluate this adapter file (beside the bare backbone), or `backbone` alone, "
                        "at every site, with the same per-subject report")
    p.add_argument("--report", type=Path, metavar="DIR",
                   help="rebuild the report of a comparison folder from its results; runs nothing")
    p.add_argument("overrides", **over)

    p = sub.add_parser("simulate", help="one federated run in Flower's simulation engine (`flwr run` + status)")
    p.add_argument("overrides", **over)

    p = sub.add_parser("peft", help="PEFT methods and Mix-PEFT combinations")
    peft_sub = p.add_subparsers(dest="peft_command", required=True)
    lst = peft_sub.add_parser("list", help="every feasible combination with its trainable share")
    lst.add_argument("--preset", default="paper", choices=["paper", "tiny"])

    adapters_cli.add_parser(sub)
    return parser


def cmd_pretrain(args) -> int:
    from petite_fl.training.jobs import pretrain

    cfg = compose(overrides=args.overrides)
    path, meta = pretrain(cfg, out=args.out)
    prov = meta["provenance"]
    console.print(f"backbone {meta['model']} pretrained on {escape(str(prov.get('source')))}: {escape(str(path))}")
    console.print(f"sha256 {meta['sha256']}  steps {prov.get('steps')}  final loss {prov.get('final_loss', 0):.4g}")
    return 0


def cmd_finetune(args) -> int:
    from petite_fl.training.jobs import finetune

    cfg = compose(overrides=args.overrides)
    path, meta = finetune(cfg)
    console.print(f"adapter ({meta['peft']['kind']}: {meta['parameters']:,} trained parameters, "
                  f"{meta['trainable_percent']:.3f} % of the backbone) for {escape(str(meta['target']))}: "
                  f"{escape(str(path))}")
    console.print(f"spec: {escape(str(path.with_suffix('.json')))}; backbone sha256 {meta['backbone_sha256'][:16]}…")
    return 0


INFER_HELP = """Denoise scans with a site's own federated adapter, or with a backbone (+ adapter) file.

  petite infer --site scanner3 [--run latest|NAME] [--site-root DIR] IN... --out DIR [--device auto|cpu|cuda]
               [--out-format nifti|dicom|both] [--input-minutes 5]
  petite infer -i IN -o OUT --backbone FILE [--adapter FILE]

--site: IN is a NIfTI file or a folder (its *.nii / *.nii.gz files); each becomes DIR/<same name> with the
input's affine, orientation and header, and DIR/<name>.json naming the adapter and backbone (SHA-256), the
settings and the device. The settings are those of the run's final test (the adapter's card), so a run's test
scans come out with its test PSNR.
IN may also be DICOM: a folder of a dynamic PET series (or several), a DICOMDIR or a DICOM file. Its first
--input-minutes are denoised into DIR/series-<hash>/, a derived PET series in the source's study and geometry
(--out-format dicom, the default for DICOM), and/or DIR/series-<hash>.nii.gz; a series that is not PET, static
or multi-bed is skipped in one line and the others go on. Positional arguments of the form key=value are Hydra overrides
(e.g. paths.cache=/data/petite federation.site_root=/x train.amp=false); every other one is an input."""

#: a Hydra override among `petite infer`'s positional arguments (anything else is an input path)
OVERRIDE = re.compile(r"^[+~]?[A-Za-z_][\w.]*=")


def cmd_infer(args) -> int:
    from petite_fl.errors import ConfigError

    overrides = [a for a in args.items if OVERRIDE.match(a)]
    inputs = [Path(a) for a in args.items if not OVERRIDE.match(a)]
    if args.site is None and args.device:  # the -i form reads its device from the config
        overrides.append(f"train.device={args.device}")
    cfg = compose(overrides=overrides)
    if args.from_pacs is not None or args.to_pacs is not None:
        return _infer_pacs(args, cfg, inputs)
    if args.site is None:
        from petite_fl.training.jobs import infer_file

        if inputs:
            raise ConfigError(f"infer: input {inputs[0]} needs --site SITE and --out DIR "
                              "(or give one file as -i IN -o OUT --backbone FILE)")
        if args.out or args.input is None or args.output is None or args.backbone is None:
            raise ConfigError("infer: give --site SITE IN... --out DIR, or -i IN -o OUT --backbone FILE")
        out = infer_file(cfg, expand_path(args.input), expand_path(args.output), expand_path(args.backbone),
                         expand_path(args.adapter) if args.adapter else None)
        console.print(f"wrote {escape(str(out))}")
        return 0
    from petite_fl.adapters.infer import infer_site

    if args.input or args.output or args.adapter:
        raise ConfigError("infer --site: give inputs as positional files or folders and --out DIR "
                          "(-i, -o and --adapter belong to the -i form)")
    if not inputs or args.out is None:
        raise ConfigError("infer --site: give one or more input NIfTI or DICOM files or folders and --out DIR")
    report = infer_site(cfg, args.site, inputs, expand_path(args.out), run=args.run,
                        site_root=expand_path(args.site_root) if args.site_root else None, device=args.device,
                        backbone=expand_path(args.backbone) if args.backbone else None, out_format=args.out_format,
                        input_minutes=args.input_minutes)
    sidecars = report.sidecars
    if sidecars:
        first = sidecars[0]
        console.print(f"{len(sidecars)} scan(s) denoised with site {escape(first['site'])}'s adapter of run "
                      f"{escape(first['run'])} ({escape(first['peft'])}, {escape(str(first['strategy']))}; adapter "
                      f"{first['adapter']['sha256'][:12]}…, backbone {first['backbone']['sha256'][:12]}…) on "
                      f"{first['device']}{' with mixed precision' if first['mixed_precision'] else ''} in "
                      f"{sum(s['seconds'] for s in sidecars):.1f} s → {escape(str(args.out))}")
    if report.skipped:
        console.print(f"{len(sidecars)} denoised, {len(report.skipped)} skipped:")
        for line in report.skipped:
            console.print(f"  skipped: {escape(line)}", soft_wrap=True)
    return 0 if sidecars else 1


def _infer_pacs(args, cfg, inputs: list[Path]) -> int:
    """`petite infer --site X --from-pacs [URL] --study UID|--series UID [--to-pacs [URL]]` (adapters.clinic)."""
    from petite_fl.adapters.clinic import infer_from_pacs
    from petite_fl.deploy.site import site_pacs
    from petite_fl.errors import ConfigError
    from petite_fl.pacs.transfer import open_pacs

    if args.from_pacs is None or inputs or args.input or args.out:
        raise ConfigError("infer --to-pacs: give --from-pacs [URL] and --study UID or --series UID, without "
                          "input files or --out (the derived series goes back to the PACS)")
    if args.site is None or (args.study is None) == (args.series is None):
        raise ConfigError("infer --from-pacs: give --site SITE and one of --study UID or --series UID")
    source = open_pacs(site_pacs(args.from_pacs or None, args.site, "--from-pacs"))
    target = open_pacs(site_pacs(args.to_pacs, args.site, "--to-pacs")) if args.to_pacs is not None else source
    query = {"StudyInstanceUID": args.study, "Modality": "PT"} if args.study else {"SeriesInstanceUID": args.series}
    report = infer_from_pacs(cfg, args.site, source, target, query, run=args.run,
                             site_root=expand_path(args.site_root) if args.site_root else None, device=args.device,
                             backbone=expand_path(args.backbone) if args.backbone else None,
                             input_minutes=getattr(args, "input_minutes", 5.0))
    for stored in report.stored:
        console.print(f"stored {stored.name} ({stored.instances} instances, confirmed) on {escape(target.label)}")
    for path in report.records:
        console.print(f"  recorded in {escape(str(path))}", soft_wrap=True)
    for line in report.passed_over:
        console.print(f"  {escape(line)}", soft_wrap=True)
    for line in report.failed:
        console.print(f"  [red]✗[/] {escape(line)}", soft_wrap=True)
    console.print(f"{len(report.stored)} series denoised from {escape(source.label)} and stored, "
                  f"{len(report.failed)} failed")
    return 0 if report.stored and not report.failed else 1


def cmd_evaluate(args) -> int:
    from petite_fl.training.jobs import backbone_for, evaluate

    cfg = compose(overrides=args.overrides)
    backbone = expand_path(args.backbone) if args.backbone else backbone_for(cfg)
    site = args.site or str(cfg.target)
    rows, summary = evaluate(cfg, site, backbone, expand_path(args.adapter) if args.adapter else None,
                             out=args.out)
    table = Table(title=f"{summary['site']} / {summary['split']} — {summary['peft'].get('kind')}")
    keys = list(summary["metrics"])
    table.add_column("subject")
    for k in keys:
        table.add_column(k, justify="right")
    for r in rows:
        table.add_row(r["subject"], *(f"{r[k]:.4f}" for k in keys))
    table.add_row("mean ± std", *(f"{summary['metrics'][k]['mean']:.4f} ± {summary['metrics'][k]['std']:.4f}"
                                  for k in keys))
    console.print(table)
    if args.out:
        console.print(f"metrics: {escape(str(args.out / 'metrics.csv'))}, {escape(str(args.out / 'metrics.json'))}")
    return 0


def cmd_compare(args) -> int:
    from petite_fl.errors import ConfigError

    if args.report is not None:
        from petite_fl.experiments.compare_folder import rebuild

        if args.arms or args.out or args.federation or args.evaluate or args.overrides:
            raise ConfigError("--report DIR rebuilds a report from the folder's own configuration and results: "
                              "give no other option or override")
        rebuild(expand_path(args.report))
        return 0
    from petite_fl.experiments.compare import run

    arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else None
    run(list(args.overrides), arms, args.out, args.federation, args.evaluate)
    return 0


def cmd_simulate(args) -> int:
    from petite_fl.experiments.flower_run import LocalSimulation, resources
    from petite_fl.federation.strategies import build_strategy
    from petite_fl.runconfig import command_config, site_list, submitted
    from petite_fl.training.settings import check_settings

    cfg = command_config(args.overrides)  # what the ServerApp will run, checked before Flower starts
    build_strategy(cfg.strategy)
    check_settings(cfg)
    cpus, gpus = resources(str(cfg.train.device))
    with LocalSimulation() as sim:
        result = sim.run(submitted(args.overrides), num_supernodes=len(site_list(cfg)),
                         cpus_per_client=cpus, gpus_per_client=gpus)
    console.print(f"Flower run {result.run_id}: {result.status} in {result.seconds:.0f} s")
    return 0


def cmd_peft(args) -> int:
    from petite_fl.peft.listing import peft_table

    rows = peft_table(args.preset)
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        part = [r for r in rows if r["backbone"] == backbone]
        mixes = [r for r in part if r["kind"] == "mix"]
        table = Table(title=f"{backbone} ({args.preset}: {part[0]['total']:,} parameters) — "
                            f"{len(mixes)} Mix-PEFT combinations")
        for col in ("kind", "encoder + decoder (+ BitFit)", "trainable", "%"):
            table.add_column(col, justify="right" if col in ("trainable", "%") else "left")
        for r in part:
            mark = " ← PETITE" if r["petite"] else ""
            table.add_row(r["kind"], f"{r['label']}{mark}", f"{r['trainable']:,}", f"{r['percent']:.3f}")
        console.print(table)
    total = sum(r["kind"] == "mix" for r in rows)
    console.print(f"{total} feasible Mix-PEFT combinations in all")
    return 0


COMMANDS = {"compare": cmd_compare, "simulate": cmd_simulate, "pretrain": cmd_pretrain, "finetune": cmd_finetune,
            "infer": cmd_infer, "evaluate": cmd_evaluate, "peft": cmd_peft, "adapters": adapters_cli.cmd_adapters}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """`petite infer` takes inputs and overrides before and after its options (argparse alone
    takes one run of positional arguments)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "infer" and not any(e.startswith("-") for e in extra):
        args.items = [*args.items, *extra]
    elif extra:
        parser.parse_args(argv)  # argparse's own error
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli(PROG, lambda: COMMANDS[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
