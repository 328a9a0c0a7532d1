"""The GPU check's Python side: one part per call, each writing OUT/parts/<part>.json (see gpu_check.sh).

    machine    the device, torch/CUDA/cuDNN and package versions, TF32 flags
    train      paper-size UNETR training steps, PETITE Mix-PEFT and full fine-tuning, float32 and
               the trainer's mixed precision: step time, peak GPU memory, trainable share (the
               benchmark's own `train` worker, one fresh process per arm)
    federated  five synthetic scanners, paper-size UNETR pretrained briefly on scanner1, then
               fedavg rounds over the plain loop (the coordinator over LocalTransport: the
               federation without Flower): validation PSNR/SSIM per round from round 0, bytes
    collect    everything under OUT/parts into OUT/gpu_check.json; standard library only, so it
               runs even when petite-fl cannot be imported, and reads what a part killed at its
               time limit left behind (the run log is written after every round)

GPU_CHECK_TINY=1 shrinks every part to CPU size: a dry run of the same code paths.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

TINY = os.environ.get("GPU_CHECK_TINY", "") not in ("", "0")
SIZES: dict[str, Any] = {
    "device": "cpu" if TINY else "cuda",
    # the trainer's batch under train=default: 2 volumes × 4 patches (data.loader.patches_per_volume)
    "train": {"model": "unetr", "preset": "tiny" if TINY else "paper", "patch": 32 if TINY else 64,
              "batch": int(os.environ.get("GPU_CHECK_TRAIN_BATCH", 2 if TINY else 8)),
              "warmup": 1 if TINY else 3, "steps": 2 if TINY else 10},
    "federated": {"preset": "tiny" if TINY else "paper", "train": "tiny" if TINY else "default",
                  # two training scans per site (one in the dry run), one validation and one test scan
                  "splits": {"train": 1 if TINY else 2, "val": 1, "test": 1},
                  "pretrain_steps": int(os.environ.get("GPU_CHECK_PRETRAIN_STEPS", 6 if TINY else 80)),
                  "rounds": int(os.environ.get("GPU_CHECK_ROUNDS", 2)),
                  "local_steps": int(os.environ.get("GPU_CHECK_LOCAL_STEPS", 3 if TINY else 10)),
                  "extra": ["train.patch_scale=0.5", "train.eval.overlap=0.0", "federation.val.patches=4"]
                  if TINY else []},
}
# Arms in the order they matter (a part cut at its time limit keeps the first ones).
ARMS = [("petite", True), ("full", True), ("petite", False), ("full", False)]
RUN_NAME = "gpu-check"


def write(path: Path, data: Any) -> None:
    """Atomic JSON (the collect step may read while a part writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def say(text: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {text}", flush=True)


# -- machine --------------------------------------------------------------------------


def machine_part(out: Path) -> None:
    import subprocess
    from importlib import metadata

    import torch

    from petite_fl.profiling import machine

    cuda = torch.cuda.is_available()
    info = machine("cuda" if cuda else "cpu")
    versions = {}
    for dist in ("torch", "numpy", "scipy", "monai", "peft", "transformers", "safetensors", "hydra-core",
                 "omegaconf", "nibabel", "pytest"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    info.update(cuda_available=cuda, versions=versions, tiny=TINY,
                tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                cudnn_benchmark=torch.backends.cudnn.benchmark,
                cudnn=torch.backends.cudnn.version() if cuda else None,
                bf16_supported=torch.cuda.is_bf16_supported() if cuda else None)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        info["nvidia_smi"] = f"unavailable: {exc}"
    write(out / "machine.json", info)
    say(f"machine: {info.get('gpu', 'no GPU')}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"{info['cores']} cores; TF32 matmul {info['tf32_matmul']}, cuDNN TF32 {info['tf32_cudnn']}")
    if SIZES["device"] == "cuda" and not cuda:
        raise SystemExit("gpu-check: torch sees no CUDA device (run with GPU_CHECK_TINY=1 for the CPU dry run)")


# -- part 1: training steps ------------------------------------------------------------


def train_part(out: Path) -> None:
    from petite_fl.errors import PetiteError
    from petite_fl.experiments.benchmark.workers import run_child

    t = SIZES["train"]
    result: dict[str, Any] = {"sizes": t, "device": SIZES["device"], "rows": [], "errors": []}
    for peft, amp in ARMS:
        label = f"{peft}, {'mixed precision' if amp else 'float32'}"
        say(f"train: {t['model']} {t['preset']}, {t['patch']}³ × {t['batch']}, {label} …")
        args = [t["model"], t["preset"], t["patch"], t["batch"], peft, t["warmup"], t["steps"], SIZES["device"], amp]
        try:
            row = run_child("train", {"args": args})
        except PetiteError as exc:  # one arm failing (e.g. out of memory) must not hide the others
            result["errors"].append({"arm": label, "error": str(exc)[-1500:]})
            say(f"train: {label} FAILED: {str(exc).splitlines()[0][:300]}")
        else:
            result["rows"].append({"arm": label, **row})
            memory = row.get("cuda_max_allocated_bytes", row["peak_rss_bytes"])
            say(f"train: {label}: {row['step_seconds'] * 1000:.0f} ms/step, {row['patches_per_second']:.1f} "
                f"patches/s, peak {'GPU' if 'cuda_max_allocated_bytes' in row else 'RSS'} memory "
                f"{memory / 2**30:.2f} GiB, trainable {row['trainable_percent']:.3f} % ({row['wall_seconds']:.0f} s)")
        result["ratios"] = train_ratios(result["rows"])
        write(out / "train.json", result)


def train_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PETITE / full at each precision, and mixed / float32 for each spec."""
    by = {(r["peft"] != "full", bool(r["amp"])): r for r in rows}
    mem = lambda r: r.get("cuda_max_allocated_bytes", r["peak_rss_bytes"])  # noqa: E731
    pairs = [(f"PETITE / full, {'mixed precision' if amp else 'float32'}", (True, amp), (False, amp))
             for amp in (True, False)]
    pairs += [(f"mixed precision / float32, {'PETITE' if petite else 'full'}", (petite, True), (petite, False))
              for petite in (True, False)]
    return [{"compare": label, "step_time_ratio": by[a]["step_seconds"] / by[b]["step_seconds"],
             "peak_memory_ratio": mem(by[a]) / mem(by[b])}
            for label, a, b in pairs if a in by and b in by]


# -- part 2: federated rounds over the plain loop ---------------------------------------


def federated_overrides(home: Path) -> list[str]:
    f = SIZES["federated"]
    splits = ",".join(f"{k}:{v}" for k, v in f["splits"].items())
    return [f"paths.cache={home}", "model=unetr", f"model.preset={f['preset']}", f"train={f['train']}",
            "peft=petite", "strategy=fedavg", "source=scanner1", "data=tiny", "data.name=synthetic-gpu-check",
            f"data.synth.subjects={sum(f['splits'].values())}", f"data.synth.splits={{{splits}}}",
            "data.synth.workers=0", f"train.device={SIZES['device']}", f"train.pretrain.steps={f['pretrain_steps']}",
            f"train.checkpoint_every={max(1, f['pretrain_steps'])}",  # one checkpoint of a 1.2 GB optimiser state
            f"federation.rounds={f['rounds']}", f"federation.local_steps={f['local_steps']}",
            "federation.eval_every=1", f"federation.run_name={RUN_NAME}", "federation.resume=false", *f["extra"]]


def federated_part(out: Path) -> None:
    from petite_fl.config import expand_path
    from petite_fl.experiments.benchmark.federated import prepare_data
    from petite_fl.experiments.benchmark.plain_loop import plain_loop
    from petite_fl.federation.server.coordinator import default_run_dir
    from petite_fl.runconfig import command_config
    from petite_fl.training.jobs import pretrain

    home = Path(os.environ.get("PETITE_FL_HOME") or out / "home")
    overrides = federated_overrides(home)
    cfg = command_config(overrides)  # what the plain loop (and a ServerApp) composes
    run_dir = default_run_dir(cfg, RUN_NAME)
    state: dict[str, Any] = {"sizes": SIZES["federated"], "device": SIZES["device"], "overrides": overrides,
                             "run_dir": str(run_dir), "phase": "data", "seconds": {}}
    write(out / "federated.json", state)

    def phase(name: str, begin: float, following: str) -> None:
        state["seconds"][name] = time.perf_counter() - begin
        state["phase"] = following
        write(out / "federated.json", state)
        say(f"federated: {name} done in {state['seconds'][name]:.1f} s")

    begin = time.perf_counter()
    say(f"federated: generating the five scanners' data ({cfg.data.synth.subjects} subjects each, full matrices) …")
    prepare_data(overrides)  # before anything touches CUDA (the generator forks its workers)
    state["data_bytes"] = sum(p.stat().st_size for p in expand_path(cfg.data.root).rglob("*") if p.is_file())
    phase("data", begin, "pretrain")

    begin = time.perf_counter()
    say(f"federated: pretraining UNETR {cfg.model.preset} on scanner1 for {cfg.train.pretrain.steps} steps …")
    _, meta = pretrain(cfg)  # cached where the coordinator looks for it
    state["pretrain"] = {k: meta["provenance"].get(k) for k in ("steps", "patch", "final_loss", "seconds")}
    phase("pretrain", begin, "federation")

    begin = time.perf_counter()
    f = SIZES["federated"]
    say(f"federated: fedavg, PETITE Mix-PEFT, 5 sites × {f['rounds']} rounds × {f['local_steps']} local steps "
        "over the plain loop …")
    result = plain_loop(overrides, quiet=False)
    summary = read(run_dir / "summary.json") or {}
    state["summary"] = {k: summary.get(k) for k in (
        "peft", "strategy", "rounds", "local_steps", "backbone_payload_bytes", "upload_bytes_per_round",
        "upload_percent_of_backbone", "test_mean", "phase_seconds", "rounds_timing", "rejected")}
    state["summary"]["test_per_site"] = {s: v.get("test") for s, v in (summary.get("sites") or {}).items()}
    state["plain_loop_seconds"] = result["seconds"]
    phase("federation", begin, "done")


# -- collect (standard library only) -----------------------------------------------------


def round_table(log: dict[str, Any]) -> list[dict[str, Any]]:
    """Per round: validation metrics (subject-weighted mean over sites, as the run log's) and bytes
    summed over the sites (round 0: the backbone; then the PEFT tensors each way)."""
    rows: dict[int, dict[str, Any]] = {}
    weights: dict[int, int] = {}
    for r in log.get("eval", []):
        if r.get("split") != "val":
            continue
        rnd, n = int(r["round"]), int(r.get("subjects", 1))
        row = rows.setdefault(rnd, {"round": rnd})
        weights[rnd] = weights.get(rnd, 0) + n
        val = row.setdefault("val", {})
        for k in ("psnr", "ssim", "nrmse", "psnr_fg", "ssim_fg"):
            if k in r:
                val[k] = val.get(k, 0.0) + float(r[k]) * n
        row.setdefault("val_psnr_per_site", {})[r["site"]] = round(float(r.get("psnr", float("nan"))), 3)
    for rnd, row in rows.items():
        row["val"] = {k: v / weights[rnd] for k, v in row["val"].items()}
    for t in log.get("transfer", []):
        row = rows.setdefault(int(t["round"]), {"round": int(t["round"])})
        what = "backbone" if t.get("what") == "backbone" else "peft"
        sums = row.setdefault("bytes_all_sites", {})
        for way in ("down", "up"):
            if t.get(f"bytes_{way}"):
                sums[f"{what}_{way}"] = sums.get(f"{what}_{way}", 0) + int(t[f"bytes_{way}"])
    return [rows[k] for k in sorted(rows)]


def federated_view(out: Path) -> dict[str, Any] | None:
    state = read(out / "parts" / "federated.json")
    if state is None:
        return None
    log = read(Path(state["run_dir"]) / "log.json") if state.get("run_dir") else None
    if log:
        table = round_table(log)
        state["rounds_table"] = table
        with_val = [r for r in table if r.get("val")]
        if len(with_val) >= 2:
            first, last = with_val[0], with_val[-1]
            change = {k: last["val"][k] - first["val"][k] for k in first["val"] if k in last["val"]}
            state["val_change"] = {"from_round": first["round"], "to_round": last["round"], **change,
                                   "improved": change.get("psnr", 0) > 0 and change.get("ssim", 0) > 0}
    return state


def tests_view(out: Path) -> dict[str, Any] | None:
    """pytest -v lines (also of a run cut at its limit) and its closing summary line."""
    text = _text(out / "parts" / "tests.out")
    if text is None:
        return None
    statuses = "PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS"
    outcome = re.compile(rf"^(tests/\S+::.+?) ({statuses})\b", re.M)
    # pytest-xdist (the project's default -n 2) writes the status first: "[gw1] [ 94%] PASSED tests/…::name"
    xdist = re.compile(rf"^\[gw\d+\] \[\s*\d+%\] ({statuses}) (tests/\S+::.+?)\s*$", re.M)
    results = {name: status for name, status in outcome.findall(text)}
    results.update({name: status for status, name in xdist.findall(text)})
    counts: dict[str, int] = {}
    for status in results.values():
        counts[status.lower()] = counts.get(status.lower(), 0) + 1
    summary = re.findall(r"^=+ (.*(?:passed|failed|error|skipped).* in [\d.]+s.*) =+$", text, re.M)
    return {"counts": counts, "summary": summary[-1] if summary else None,
            "cuda_tests": {n: s for n, s in results.items() if "cuda" in n},
            "not_passed": {n: s for n, s in results.items() if s != "PASSED"}}


def _text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def part_status(out: Path, name: str) -> dict[str, Any]:
    status = read(out / "parts" / f"{name}.status.json")
    if status is None:
        return {"status": "not run"}
    rc = int(status.get("rc", -1))
    status["status"] = ("ok" if rc == 0 else f"timed out at its {status.get('limit')} s limit" if rc == 124
                        else "killed (SIGKILL: time limit + 10 s, or out of memory)" if rc == 137
                        else "skipped: no time left" if rc == -2 else f"failed (exit {rc})")
    if rc != 0:
        tail = (_text(out / "parts" / f"{name}.out") or "").strip().splitlines()[-15:]
        status["output_tail"] = tail
    return status


def collect(out: Path) -> None:
    parts = ("machine", "train", "federated", "tests")
    report = {"check": "petite-fl GPU check (benchmarks/gpu_check.sh)", "tiny": TINY,
              "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "parts": {p: part_status(out, p) for p in parts},
              "machine": read(out / "parts" / "machine.json"),
              "train": read(out / "parts" / "train.json"),
              "federated": federated_view(out),
              "tests": tests_view(out)}
    write(out / "gpu_check.json", report)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("machine", "train", "federated", "collect"):
        print("usage: gpu_check.py machine|train|federated|collect OUT", file=sys.stderr)
        return 2
    out = Path(argv[1])
    if argv[0] == "collect":
        collect(out)
        return 0
    {"machine": machine_part, "train": train_part, "federated": federated_part}[argv[0]](out / "parts")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
