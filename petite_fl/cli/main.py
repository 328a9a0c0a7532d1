"""`petite`: single-site pretrain / finetune / infer / evaluate, and `petite peft list`.

Every command takes Hydra overrides (key=value) after its options, e.g.
`petite finetune target=scanner5 peft=mix peft.encoder=lora peft.decoder=ssf train=tiny`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from petite_fl.cli import adapters as adapters_cli
from petite_fl.cli.common import console, run_cli
from petite_fl.config import compose, expand_path

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

    p = sub.add_parser("infer", help="NIfTI in → NIfTI out with a backbone (+ adapter)")
    p.add_argument("-i", "--input", type=Path, required=True, help="input NIfTI (short scan)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output NIfTI (input's affine and header)")
    p.add_argument("--backbone", type=Path, required=True)
    p.add_argument("--adapter", type=Path)
    p.add_argument("overrides", **over)

    p = sub.add_parser("evaluate", help="PSNR / SSIM / NRMSE per subject and mean ± std over a split")
    p.add_argument("--backbone", type=Path, help="default: the one pretrained on `source`")
    p.add_argument("--adapter", type=Path, help="default: none (no fine-tuning)")
    p.add_argument("--site", help="scanner name or manifest (default: `target`)")
    p.add_argument("--out", type=Path, help="folder for metrics.csv / metrics.json")
    p.add_argument("overrides", **over)

    p = sub.add_parser("compare", help="the main job: local vs federated PEFT on the five scanners → report "
                                       "(compare=study: a measurement that tells arms apart; compare=paper: GPU)")
    p.add_argument("--arms", help="comma-separated arms (default: compare.default_arms of the preset; every arm "
                                  "is in compare.arms, petite_fl/configs/compare/default.yaml)")
    p.add_argument("--out", type=Path, help="report folder (default: under the cache, by config)")
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


def cmd_infer(args) -> int:
    from petite_fl.training.jobs import infer_file

    cfg = compose(overrides=args.overrides)
    out = infer_file(cfg, expand_path(args.input), expand_path(args.output), expand_path(args.backbone),
                     expand_path(args.adapter) if args.adapter else None)
    console.print(f"wrote {escape(str(out))}")
    return 0


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
    from petite_fl.experiments.compare import run

    arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else None
    run(list(args.overrides), arms, args.out)
    return 0


def cmd_simulate(args) -> int:
    from petite_fl.experiments.flower_run import LocalSimulation, resources
    from petite_fl.federation.site import site_list
    from petite_fl.federation.strategies import build_strategy
    from petite_fl.runconfig import command_config, submitted

    cfg = command_config(args.overrides)  # what the ServerApp will run, checked before Flower starts
    build_strategy(cfg.strategy)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: COMMANDS[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
