"""`petite adapters list | export`: the adapters a site holds, and taking one away.

A block of its own (parser + commands) that `petite_fl.cli.main` plugs in.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from petite_fl.config import compose, expand_path
from petite_fl.console import console
from petite_fl.errors import PetiteError

#: the metric columns of the listing, when some adapter has them
METRIC_COLUMNS = (("val_psnr", "val PSNR", "{:.2f}"), ("val_ssim", "val SSIM", "{:.4f}"),
                  ("test_psnr", "test PSNR", "{:.2f}"), ("test_ssim", "test SSIM", "{:.4f}"))


def add_parser(sub: argparse._SubParsersAction) -> None:
    over = {"nargs": "*", "help": "Hydra overrides, e.g. paths.cache=/data/petite (sets federation.site_root)"}
    p = sub.add_parser("adapters", help="the adapters a site holds: list them, export one (bundle or merged model)")
    cmds = p.add_subparsers(dest="adapters_command", required=True)
    lst = cmds.add_parser("list", help="every adapter of a site (all sites without --site), newest last")
    lst.add_argument("--site", help="one site (default: every site under the site root)")
    lst.add_argument("--site-root", type=Path, help="a deployed site's cache folder (default: federation.site_root)")
    lst.add_argument("--json", action="store_true", help="print the entries as JSON (for scripts)")
    lst.add_argument("overrides", **over)
    exp = cmds.add_parser("export", help="an adapter + its backbone + card, or (--merged) one standalone model")
    exp.add_argument("--site", help="the site whose adapter to export")
    exp.add_argument("--run", default="latest", help="run name, or latest (default)")
    exp.add_argument("--adapter", type=Path, help="an adapter file instead of --site/--run")
    exp.add_argument("--backbone", type=Path, help="its backbone file (default: the site's backbone cache)")
    exp.add_argument("--merged", action="store_true",
                     help="fold the adapter into the backbone: model.safetensors + config.json, no PEFT code needed")
    exp.add_argument("--format", choices=("safetensors", "monai-bundle"), default="safetensors",
                     help="with --merged: safetensors (default, for petite-fl) or monai-bundle (a MONAI bundle "
                          "folder that `python -m monai.bundle run` executes without petite-fl)")
    exp.add_argument("--site-root", type=Path, help="a deployed site's cache folder (default: federation.site_root)")
    exp.add_argument("--out", type=Path, required=True, help="folder to write")
    exp.add_argument("overrides", **over)


def _site_root(args) -> tuple[Path, Path | None]:
    """(site root, the cache whose single-site fine-tunings are listed too, if from the config)."""
    if args.site_root:
        return expand_path(args.site_root), None
    cfg = compose(overrides=args.overrides)
    return expand_path(cfg.federation.site_root), expand_path(cfg.paths.cache)


def listed(site_root: Path, site: str | None, cache: Path | None) -> tuple[list[Any], list[Path]]:
    """(entries, unreadable files): a site's federated adapters (and single-site fine-tunings)."""
    from petite_fl.adapters.catalog import entry, scan, site_names
    from petite_fl.federation.site.paths import site_dir

    federated = not site or site_dir(site_root, site).is_dir()
    entries, bad = scan(site_root, site) if federated else ([], [])
    for path in sorted((cache / "runs" / "finetune").glob("*/adapter.safetensors")) if cache else []:
        try:
            found = entry(path)
        except PetiteError:
            bad.append(path)
            continue
        if site is None or found.site == site:
            entries.append(found)
    if not federated and not entries:
        known = ", ".join(site_names(site_root)) or "none"
        raise PetiteError(f"site {site}: unknown here, no folder under {site_root} (sites there: {known})")
    return sorted(entries, key=lambda e: (e.created, str(e.path))), bad


def _as_json(e: Any) -> dict[str, Any]:
    return {"site": e.site, "run": e.run, "strategy": e.strategy, "peft": e.peft, "rounds": e.rounds,
            "backbone_sha256": e.backbone_sha256, "metrics": e.metrics, "training_scans": e.training_scans,
            "created": e.created, "path": str(e.path), "card": e.card}


def cmd_list(args) -> int:
    root, cache = _site_root(args)
    entries, bad = listed(root, args.site, cache)
    if args.json:
        sys.stdout.write(json.dumps({"site_root": str(root), "adapters": [_as_json(e) for e in entries],
                                     "unreadable": [str(p) for p in bad]}, indent=2) + "\n")
        return 0
    where = f"site {args.site}" if args.site else f"sites under {root}"
    if cache is not None:
        where += f" (+ single-site fine-tunings in {cache / 'runs' / 'finetune'})"
    if not entries:
        console.print(f"{where}: no adapters (a federated run writes one per site when it finishes)", markup=False)
    else:
        table = _table(entries, f"{len(entries)} adapter(s) of {where}, newest last")
        # piped into a file or a log: whole cells (rich clamps a print to its console's width, 160 when piped)
        out = console if console.is_terminal else Console(file=console.file, width=400, highlight=False)
        out.print(table)
    for path in bad:
        console.print(f"unreadable adapter file (left out): {path}", markup=False)
    return 0


def _table(entries: list[Any], title: str) -> Table:
    metrics = [(k, h, f) for k, h, f in METRIC_COLUMNS if any(k in e.metrics for e in entries)]
    table = Table(title=escape(title), box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for col in ("site", "run", "strategy", "PEFT", "rounds", "backbone", *(h for _, h, _ in metrics), "scans",
                "date (UTC)"):
        table.add_column(col, justify="right" if col in ("rounds", "scans") or "PSNR" in col or "SSIM" in col
                         else "left", no_wrap=True)
    for e in entries:
        table.add_row(*(escape(str(v)) for v in (
            e.site, e.run, e.strategy or "?", e.peft, "" if e.rounds is None else e.rounds, e.backbone_sha256[:12],
            *(f.format(e.metrics[k]) if k in e.metrics else "" for k, _, f in metrics),
            "" if e.training_scans is None else e.training_scans, e.created.replace("T", " ")[:16])))
    return table


def cmd_export(args) -> int:
    from petite_fl.adapters.export import export_bundle, export_merged, resolve

    if args.adapter and args.site:
        raise PetiteError("give either --site (with --run) or --adapter FILE, not both")
    if args.format == "monai-bundle" and not args.merged:
        raise PetiteError("--format monai-bundle needs --merged: a MONAI bundle holds one standalone network")
    root, _ = _site_root(args)
    source = resolve(root, args.site, args.run, expand_path(args.adapter) if args.adapter else None,
                     expand_path(args.backbone) if args.backbone else None)
    label = f"{source.site} / {source.run} ({source.card.get('peft') or source.meta['peft'].get('kind')})"
    if args.format == "monai-bundle":
        from petite_fl.adapters.monai_bundle import export_monai_bundle

        paths, merged, check = export_monai_bundle(source, expand_path(args.out))
        console.print(f"MONAI bundle of {label}: max |diff| merged vs backbone + adapter "
                      f"{check['merge_max_abs_diff']:.3g}, exported vs merged {check['export_max_abs_diff']:.3g} "
                      f"(output range {merged.output_range:.3g}); to run it: docs/README.md", markup=False,
                      soft_wrap=True)
    elif args.merged:
        paths, merged = export_merged(source, expand_path(args.out))
        slots = ", ".join(f"{len(v)} {k}" for k, v in merged.slots.items()) or "none"
        console.print(f"merged {label}: checked against backbone + adapter, max |diff| {merged.max_abs_diff:.3g} "
                      f"(output range {merged.output_range:.3g}); merge slots: {slots}", markup=False,
                      soft_wrap=True)
    else:
        paths = export_bundle(source, expand_path(args.out))
        console.print(f"bundle of {label}: adapter, card and backbone {source.backbone_meta['sha256'][:12]}…",
                      markup=False)
    for path in paths:
        console.print(f"  {path}", markup=False)
    return 0


def cmd_adapters(args) -> int:
    return {"list": cmd_list, "export": cmd_export}[args.adapters_command](args)
