"""petite-fl's benchmarks: bytes, federated overhead, PEFT vs full fine-tuning, inference, scaling.

One command runs them all and writes `benchmark.json` and `benchmark.md` (every figure with
the command that made it and the machine it ran on):

    python -m petite_fl.experiments.benchmark --quick          # CPU-sized: about 45 min on 2 cores
    python -m petite_fl.experiments.benchmark --device cuda    # paper-size models and patches, on a GPU
    python -m petite_fl.experiments.benchmark --quick --only comm,train

(`python -m simulation.benchmark` is the same from a checkout.) Sections (`--only`): comm
(bytes of all 21 Mix-PEFT combinations, every single method and full fine-tuning at paper
size; 16-bit transport and FFA-LoRA, with their PSNR on the synthetic data), overhead
(`flwr run` vs the same training without Flower), train (PEFT vs full fine-tuning:
patches/s and peak memory), inference (sliding window per scanner geometry), scaling
(5/10/20 sites and 1/2/4 rounds: wall time, server memory, aggregation), site (each scanner's
round as the federation runs it vs its bare network steps: the ratio; 1–2 min per scanner and
thread count on a shared 2-core machine). Timed parts run in
child processes so that one arm's memory never counts for another.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from petite_fl.experiments.benchmark.workers import RESULT

SECTIONS = ("comm", "overhead", "train", "inference", "scaling", "site")
PROG = "python -m petite_fl.experiments.benchmark"


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections and write benchmark.json and benchmark.md after each."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU-sized runs (tiny presets where training is long)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, help="folder for benchmark.json/.md (default: <cache>/benchmarks/<mode>)")
    parser.add_argument("--no-quality", action="store_true", help="comm: bytes only, skip the federated PSNR runs")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args.worker, json.loads(args.job))

    from petite_fl.console import console, run_cli

    def body() -> int:
        import datetime

        import torch

        from petite_fl.atomic import write_json
        from petite_fl.config import compose, expand_path
        from petite_fl.errors import ConfigError
        from petite_fl.experiments.benchmark.comm import comm_bytes, comm_quality
        from petite_fl.experiments.benchmark.inference import inference
        from petite_fl.experiments.benchmark.overhead import overhead
        from petite_fl.experiments.benchmark.plan import plan
        from petite_fl.experiments.benchmark.report import goals, markdown
        from petite_fl.experiments.benchmark.scaling import scaling
        from petite_fl.experiments.benchmark.site_round import site_rounds
        from petite_fl.experiments.benchmark.training import train_comparison
        from petite_fl.profiling import machine, machine_label

        sections = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(sections) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"--only: unknown section(s) {unknown} (known: {', '.join(SECTIONS)})")
        device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is visible to torch")
        mode = "quick" if args.quick else "full"
        p = plan(args.quick, device)
        cache = expand_path(compose("config").paths.cache)
        out = args.out or cache / "benchmarks" / f"{mode}-{device}"
        out.mkdir(parents=True, exist_ok=True)
        home = Path(tempfile.mkdtemp(prefix="petite-bench-", dir=out))  # sites, runs and data of this benchmark
        info = machine(device)
        command = shlex.join([*PROG.split(), *(argv if argv is not None else sys.argv[1:])])
        report = {"mode": mode, "command": command,
                  "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                  "machine": info, "machine_label": machine_label(info), "plan": p, "results": {}, "seconds": {}}
        console.print(f"benchmark ({mode}, {report['machine_label']}) → {out}")

        def save() -> None:
            report["goals"] = goals(report["results"])
            write_json(out / "benchmark.json", report)
            (out / "benchmark.md").write_text(markdown(report))

        for section in sections:
            console.print(f"[bold]{section}[/bold] …")
            begin = time.perf_counter()
            if section == "comm":
                result = comm_bytes()
                if not args.no_quality:
                    result["quality"] = comm_quality(out, [f"train.device={device}", *p["compare_overrides"]])
            elif section == "overhead":
                result = overhead(home, p, device)
            elif section == "train":
                result = train_comparison(p, device)
            elif section == "inference":
                result = inference(p, device)
            elif section == "site":
                result = site_rounds(home, p, device)
            else:
                result = scaling(home, p, device)
            report["results"][section] = result
            report["seconds"][section] = time.perf_counter() - begin
            save()
            console.print(f"  {section} done in {report['seconds'][section]:.0f} s")
        console.print(markdown(report), markup=False, highlight=False)
        console.print(f"written: {out / 'benchmark.json'} and {out / 'benchmark.md'}")
        return 0

    return run_cli("benchmark", body)


def run_worker(name: str, job: dict[str, Any]) -> int:
    """The child's side of `workers.run_child`: run one measurement and print its result on one line."""
    if name == "train":
        from petite_fl.experiments.benchmark.training import train_speed

        result = train_speed(*job["args"])
    elif name == "local":
        from petite_fl.experiments.benchmark.plain_loop import plain_loop

        result = plain_loop(job["overrides"])
    elif name == "site":
        from petite_fl.experiments.benchmark.site_round import site_round_speed

        result = site_round_speed(*job["args"])
    else:
        raise SystemExit(f"unknown worker {name}")
    print(RESULT + json.dumps(result), flush=True)
    return 0
