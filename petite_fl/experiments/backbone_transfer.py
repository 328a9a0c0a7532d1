"""Measure the one-time backbone distribution through Flower's simulation engine.

Writes an untrained backbone of the chosen size (default: paper-size UNETR, ~400 MB in
fp32), then runs two federated runs with it over the real `flwr run` path: the first
sends one copy per site, the second (same sites, cache kept) must send nothing. Each run
evaluates the backbone with minimal settings (no training rounds), so on a CPU the cost
is the transfer plus a short evaluation.

    python -m petite_fl.experiments.backbone_transfer [--sites 2] [overrides...]

(`python -m simulation.backbone_transfer` is the same from a checkout.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from petite_fl.artifacts import save_backbone
from petite_fl.console import console, run_cli
from petite_fl.experiments.flower_run import LocalSimulation
from petite_fl.models.registry import build_backbone
from petite_fl.runconfig import submitted


def measure(sites: list[str], model: str, preset: str, overrides: list[str], home: Path) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    backbone = home / f"{model}-{preset}-untrained.safetensors"
    meta = save_backbone(build_backbone(model, preset), backbone, {"source": "untrained", "preset": preset})
    results = []
    base = [f"paths.cache={home}", f"backbone={backbone}", f"federation.sites=[{','.join(sites)}]",
            "federation.rounds=0", "train=tiny", "train.eval.overlap=0", "federation.val.patches=1",
            "data=tiny", "data.synth.workers=1", *overrides]
    with LocalSimulation() as sim:
        for attempt in ("first run", "second run"):
            result = sim.run(submitted([*base, f"federation.run_name=transfer-{attempt[0]}"]),
                             num_supernodes=len(sites))
            run_dir = home / "runs" / "federated" / f"transfer-{attempt[0]}"
            summary = json.loads((run_dir / "summary.json").read_text())
            log = json.loads((run_dir / "log.json").read_text())
            transfer = [r for r in log["transfer"] if r["what"] == "backbone"]
            results.append({"run": attempt, "flower_run_seconds": round(result.seconds, 1),
                            "backbone_payload_bytes": summary["backbone_payload_bytes"],
                            "bytes_per_site": {r["site"]: r["bytes_down"] for r in transfer},
                            "distribution_seconds": max((r.get("seconds", 0) for r in transfer), default=0)})
    return {"backbone": str(backbone), "sha256": meta["sha256"], "runs": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m petite_fl.experiments.backbone_transfer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", default="scanner4,scanner5")
    parser.add_argument("--model", default="unetr")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--home", type=Path, help="cache folder (default: a temporary one)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    def body() -> int:
        home = args.home or Path(tempfile.mkdtemp(prefix="petite-transfer-"))
        out = measure(args.sites.split(","), args.model, args.preset, args.overrides, home)
        console.print_json(json.dumps(out))
        return 0

    return run_cli("backbone_transfer", body)


if __name__ == "__main__":
    sys.exit(main())
