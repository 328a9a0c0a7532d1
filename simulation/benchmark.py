"""petite-fl's benchmarks: bytes, federated overhead, PEFT vs full fine-tuning, inference, scaling.

One command runs them all and writes `benchmark.json` and `benchmark.md` (every figure with
the command that made it and the machine it ran on):

    python -m simulation.benchmark --quick          # CPU-sized: about 45 min on 2 cores
    python -m simulation.benchmark --device cuda    # paper-size models and patches, on a GPU
    python -m simulation.benchmark --quick --only comm,train

Sections (`--only`): comm (bytes of all 21 Mix-PEFT combinations, every single method and
full fine-tuning at paper size; 16-bit transport and FFA-LoRA, with their PSNR on the
synthetic data), overhead (`flwr run` vs the same training without Flower), train (PEFT vs
full fine-tuning: patches/s and peak memory), inference (sliding window per scanner
geometry), scaling (5/10/20 sites and 1/2/4 rounds: wall time, server memory, aggregation).
Timed parts run in child processes so that one arm's memory never counts for another.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SECTIONS = ("comm", "overhead", "train", "inference", "scaling")
GOALS = {  # figure → (comparison, bound): the targets of issue #7
    "overhead_ratio": ("<=", 1.15),
    "peak_memory_ratio": ("<=", 0.7),
    "throughput_ratio": (">=", 1.2),
}
_RESULT = "BENCHMARK-RESULT "


# -- sizes ------------------------------------------------------------------------------


def plan(quick: bool, device: str) -> dict[str, Any]:
    """What each section measures: CPU-sized with --quick, the paper's sizes otherwise."""
    if quick:
        return {
            # (model, preset, patch, batch): paper-size networks at the paper's patch, small batches on a CPU
            "train_cases": [("unetr", "paper", 64, 1), ("unetr", "paper", 64, 2), ("cvtgan", "paper", 64, 2)],
            "train_steps": (2, 3),                                                   # (warm-up, timed)
            "infer_preset": "tiny", "infer_patch_scale": 0.5,
            "fl_preset": "tiny", "fl_train": "tiny",
            "overhead": [(3, 10), (5, 100)],  # (rounds, local steps): fixed vs per-round cost
            "scaling": {"sites": (5, 10, 20), "rounds": (1, 2, 4), "steps": 2},
            "compare_overrides": [],
        }
    return {
        "train_cases": [("unetr", "paper", 64, 4), ("cvtgan", "paper", 64, 4)],
        "train_steps": (3, 10),
        "infer_preset": "paper", "infer_patch_scale": 1.0,
        "fl_preset": "paper", "fl_train": "default",
        "overhead": [(3, 20), (5, 100)],
        "scaling": {"sites": (5, 10, 20), "rounds": (1, 2, 4), "steps": 5},
        "compare_overrides": ["model.preset=paper", "train=default", "federation.local_steps=50"],
    }


# -- 1. communication ----------------------------------------------------------------------


def comm_bytes() -> dict[str, Any]:
    """Bytes per site per round of every spec at paper size (no training: exact on any machine)."""
    from petite_fl.config import compose
    from petite_fl.errors import ConfigError
    from petite_fl.federation.payload import round_payload
    from petite_fl.models.registry import available_backbones, build_backbone
    from petite_fl.peft.registry import available_methods
    from petite_fl.peft.spec import PETITE_CHOICE, feasible_mixes

    strategies = {s: dict(compose("config", [f"strategy={s}"]).strategy) for s in ("fedavg", "shared-encoder")}
    rows, options = [], []
    for model in available_backbones():
        small = build_backbone(model, "tiny")
        specs = [{"name": "full"}]
        specs += [{"name": m} for m in available_methods() if m not in ("none", "full")]
        specs += [{"name": "mix", "encoder": s.encoder, "decoder": s.decoder, "bitfit": True}
                  for s in feasible_mixes(small)]
        for cfg in specs:
            try:
                fed = round_payload(model, "paper", cfg, strategies["fedavg"])
                enc = round_payload(model, "paper", cfg, strategies["shared-encoder"])
            except ConfigError:  # a single method this backbone cannot take (e.g. VPT on a CNN decoder)
                continue
            kind = "full" if cfg["name"] == "full" else "mix" if cfg["name"] == "mix" else "single"
            petite = kind == "mix" and (cfg["encoder"], cfg["decoder"]) == PETITE_CHOICE[model]
            rows.append({"model": model, "kind": kind, "spec": fed["spec"], "petite": petite,
                         "trainable_percent": fed["trainable_percent"], "upload_bytes": fed["upload_bytes"],
                         "download_bytes": fed["download_bytes"], "percent_of_backbone": fed["percent_of_backbone"],
                         "shared_encoder_upload_bytes": enc["upload_bytes"], "backbone_bytes": fed["backbone_bytes"]})
        # Below float32: 16-bit transport and FFA-LoRA, on the PETITE mix and on LoRA alone.
        petite = {"name": "petite"}
        ffa = {"lora": {"ffa": True}}
        for label, cfg, transport in [
            ("PETITE, float32", petite, "float32"), ("PETITE, float16", petite, "float16"),
            ("PETITE, bfloat16", petite, "bfloat16"), ("PETITE + FFA-LoRA", {**petite, "args": ffa}, "float32"),
            ("PETITE + FFA-LoRA, bfloat16", {**petite, "args": ffa}, "bfloat16"),
            ("LoRA, float32", {"name": "lora"}, "float32"),
            ("LoRA + FFA-LoRA", {"name": "lora", "args": ffa}, "float32"),
        ]:
            r = round_payload(model, "paper", cfg, strategies["fedavg"], transport)
            options.append({"model": model, "option": label, "transport": transport, "upload_bytes": r["upload_bytes"],
                            "percent_of_backbone": r["percent_of_backbone"]})
        for group in ("PETITE", "LoRA"):
            base = next(o for o in options if o["model"] == model and o["option"] == f"{group}, float32")
            for o in options:
                if o["model"] == model and o["option"].startswith(group):
                    o["saving_vs_float32"] = 1.0 - o["upload_bytes"] / base["upload_bytes"]
    mixes = [r for r in rows if r["kind"] == "mix"]
    return {"rows": rows, "options": options, "mix_count": len(mixes),
            "max_mix_percent": max(r["percent_of_backbone"] for r in mixes)}


def comm_quality(out: Path, overrides: list[str]) -> dict[str, Any]:
    """Head-mask PSNR of fedavg in float32 vs 16-bit transport vs FFA-LoRA (petite compare arms), paired."""
    from simulation.compare import compare_config, compare_overrides
    from simulation.compare import run as compare_run
    from simulation.compare_report import differences, load_arms

    arms = ["fedavg", "fedavg-fp16", "fedavg-bf16", "fedavg-ffa"]
    folder = compare_run(overrides, arms, out / "compare-options")
    cfg = compare_config(compare_overrides(overrides))
    seeds = [int(cfg.seed) + i for i in range(int(cfg.compare.seeds))]
    data, _ = load_arms(folder, arms, seeds)
    sites = list(cfg.federation.sites)
    base = data["fedavg"].first
    rows = []
    for arm, runs in data.items():
        s = runs.first
        pooled = differences(data, arm, "fedavg", seeds, sites, "psnr_fg")[1] if arm != "fedavg" else None
        rows.append({"arm": arm, "psnr_fg": s["test_mean"]["psnr_fg"], "upload_bytes": s["upload_bytes_per_round"],
                     "psnr_fg_change": pooled.text() if pooled else "–", "verdict": pooled.verdict() if pooled else "",
                     "byte_saving": 1.0 - s["upload_bytes_per_round"] / base["upload_bytes_per_round"]})
    return {"rows": rows, "rounds": base["rounds"], "local_steps": base["local_steps"], "folder": str(folder)}


# -- 2. federated overhead ----------------------------------------------------------------------


def _fl_overrides(home: Path, backbone: Path, p: dict[str, Any], sites: list[str], rounds: int, steps: int,
                  name: str, extra: list[str] = ()) -> list[str]:
    return [f"paths.cache={home}", f"backbone={backbone}", f"model.preset={p['fl_preset']}", f"train={p['fl_train']}",
            "data=tiny", "data.synth.workers=1", "strategy=fedavg", f"federation.sites=[{','.join(sites)}]",
            f"federation.rounds={rounds}", f"federation.local_steps={steps}", f"federation.eval_every={rounds + 1}",
            f"federation.run_name={name}", "federation.resume=false", f"federation.site_root={home}/sites-{name}",
            *extra]


def _untrained_backbone(home: Path, model: str, preset: str) -> Path:
    """Timing does not depend on the weights: an untrained backbone needs no pretraining."""
    import torch

    from petite_fl.artifacts import save_backbone
    from petite_fl.models.registry import build_backbone

    path = home / f"{model}-{preset}-untrained.safetensors"
    if not path.is_file():
        torch.manual_seed(0)
        save_backbone(build_backbone(model, preset), path, {"source": "untrained (benchmark)", "preset": preset})
    return path


def _prepare_data(overrides: list[str]) -> None:
    from petite_fl.config import compose
    from petite_fl.federation.site import site_list
    from petite_fl.training.jobs import resolve_site

    cfg = compose("config", overrides)
    for site in site_list(cfg):
        resolve_site(cfg, site)


def overhead(home: Path, p: dict[str, Any], device: str) -> dict[str, Any]:
    """`flwr run` vs the same sites, steps, data and averaging in one plain process, back to back.

    Both are timed from the command to its end, the plain loop as a fresh `python` process
    (imports included) as a user would run it. Two workloads separate Flower's fixed cost
    (starting the simulation engine, the apps' imports) from its cost per round.
    """
    from simulation.flower_run import LocalSimulation

    sites = ["scanner1", "scanner2", "scanner3", "scanner4", "scanner5"]
    backbone = _untrained_backbone(home, "unetr", p["fl_preset"])
    cores = os.cpu_count() or 1
    rows = []
    for rounds, steps in p["overhead"]:
        name = f"overhead-{rounds}x{steps}"
        base = _fl_overrides(home, backbone, p, sites, rounds, steps, name, [f"train.device={device}"])
        _prepare_data(base)
        # One site at a time, as the plain loop trains them: the ratio is Flower's cost, not parallelism.
        begin = time.perf_counter()
        with LocalSimulation(echo=lambda line: None) as sim:
            started = time.perf_counter() - begin
            flower = sim.run({"overrides": shlex.join(base)}, num_supernodes=len(sites), cpus_per_client=cores,
                             gpus_per_client=1.0 if device == "cuda" else 0.0)
        local = _child("local", {"overrides": base})
        summary = json.loads((home / "runs" / "federated" / name / "summary.json").read_text())
        rows.append({"sites": len(sites), "rounds": rounds, "local_steps": steps, "preset": p["fl_preset"],
                     "flower_run_seconds": flower.seconds, "superlink_start_seconds": started,
                     "local_seconds": local["wall_seconds"], "overhead_ratio": flower.seconds / local["wall_seconds"],
                     "flower_test_psnr": summary["test_mean"].get("psnr"), "local_test_psnr": local["test_psnr"],
                     "flower_phase_seconds": summary["phase_seconds"], "local_phase_seconds": local["phase_seconds"]})
        print(f"  overhead: {rounds} rounds × {steps} steps: flwr run {flower.seconds:.0f} s, "
              f"plain loop {local['wall_seconds']:.0f} s", flush=True)
    return {"rows": rows, "note": f"client-resources-num-cpus={cores}: one simulated site at a time, like the "
                                  "plain loop; the SuperLink is started before the timed `flwr run`"}


def local_equivalent(overrides: list[str]) -> dict[str, Any]:
    """The federated job without Flower: every site's model in memory, same seeds, same steps.

    Each site trains `local_steps` per round from the global adapter, the uploads are
    averaged by the same function the server uses, round 1 is validated and the final
    model evaluated (val patches, whole-volume test) exactly as the federated sites do.
    """
    import torch

    from petite_fl.artifacts import load_backbone
    from petite_fl.config import compose
    from petite_fl.data.patches import site_patch_dataset
    from petite_fl.data.site import load_site
    from petite_fl.federation.aggregate import weighted_average
    from petite_fl.federation.site import round_seed, site_list
    from petite_fl.peft.apply import adapter_state_dict, apply_peft, load_adapter_state
    from petite_fl.peft.spec import spec_from_config
    from petite_fl.training.inference import evaluate_patches, evaluate_site, summarise
    from petite_fl.training.jobs import backbone_for, device_and_amp, resolve_site, training_patch
    from petite_fl.training.objectives import make_objective
    from petite_fl.training.trainer import train

    begin = time.perf_counter()
    phases = {}
    cfg = compose("config", overrides)
    device, amp = device_and_amp(cfg)
    rounds, steps, seed = int(cfg.federation.rounds), int(cfg.federation.local_steps), int(cfg.seed)
    path = backbone_for(cfg, quiet=True)
    sites = {}
    for name in site_list(cfg):
        model, meta = load_backbone(path, device)
        spec = spec_from_config(cfg.peft, model)
        torch.manual_seed(seed)
        state = apply_peft(model, spec)
        model.to(device)
        manifest = resolve_site(cfg, name)
        data = load_site(manifest, splits=("train", "val", "test"), scaling=str(cfg.data.loader.scaling))
        objective = make_objective(cfg.train, model.name, str(meta["provenance"].get("preset", "tiny")), device)
        sites[name] = (model, state, objective, data, training_patch(manifest, cfg.train, model.size_multiple))
    first = next(iter(sites.values()))
    current = adapter_state_dict(first[0], first[1])
    phases["setup"] = time.perf_counter() - begin
    threshold = float(cfg.data.loader.foreground_threshold)
    for rnd in range(1, rounds + 1):
        uploads = []
        for name, (model, state, objective, data, patch) in sites.items():
            load_adapter_state(model, state, current)
            if rnd == 1:
                evaluate_patches(model, data, "val", patch, device=device, patches=int(cfg.federation.val.patches),
                                 seed=seed, foreground_threshold=threshold, amp=amp)
            dataset = site_patch_dataset(data, "train", cfg.data.loader, seed=round_seed(seed, name, rnd) % 2**31,
                                         patch=patch)
            torch.manual_seed(round_seed(seed, name, rnd, "train1") % 2**31)
            train(model, dataset, objective, steps=steps, lr=float(cfg.peft.lr), train_cfg=cfg.train, device=device,
                  amp=amp, quiet=True, schedule_offset=(rnd - 1) * steps, schedule_total=rounds * steps)
            uploads.append((adapter_state_dict(model, state), len(data.pairs["train"])))
        current = weighted_average(uploads)
    phases["rounds"] = time.perf_counter() - begin - phases["setup"]
    psnr = []
    for model, state, _, data, patch in sites.values():
        load_adapter_state(model, state, current)
        evaluate_patches(model, data, "val", patch, device=device, patches=int(cfg.federation.val.patches),
                         seed=seed, foreground_threshold=threshold, amp=amp)
        rows = evaluate_site(model, data, "test", patch, device=device, eval_cfg=cfg.train.eval,
                             foreground_threshold=threshold, amp=amp, quiet=True)
        psnr.append(summarise(rows)["psnr"]["mean"])
    phases["final_evaluation"] = time.perf_counter() - begin - phases["setup"] - phases["rounds"]
    return {"seconds": time.perf_counter() - begin, "test_psnr": statistics.fmean(psnr), "phase_seconds": phases}


# -- 3. PEFT vs full fine-tuning -------------------------------------------------------------------


def train_speed(model_name: str, preset: str, patch: int, batch: int, peft: str, warmup: int, steps: int,
                device_name: str) -> dict[str, Any]:
    """Training steps of one spec (the trainer's objective and optimiser), in this fresh process."""
    import torch

    from petite_fl.config import compose
    from petite_fl.models.registry import build_backbone
    from petite_fl.peft.apply import apply_peft, count_parameters
    from petite_fl.peft.spec import spec_from_config
    from petite_fl.profiling import current_rss_bytes, peak_rss_bytes, time_steps
    from petite_fl.training.device import resolve_device, use_amp
    from petite_fl.training.objectives import make_objective

    device = resolve_device(device_name)
    amp = use_amp("auto", device)
    cfg = compose("config", [f"model={model_name}", f"model.preset={preset}", f"peft={peft}"])
    torch.manual_seed(0)
    model = build_backbone(model_name, preset)
    state = apply_peft(model, spec_from_config(cfg.peft, model))
    model.to(device).train()
    objective = make_objective(cfg.train, model_name, preset, device)
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(cfg.peft.lr), weight_decay=float(cfg.train.weight_decay))
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    x = torch.rand(batch, 1, patch, patch, patch, device=device)
    data = {"input": x, "target": (x * 0.9 + 0.05).clamp(0, 1)}
    idle_rss = current_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = time_steps(lambda: objective.step(model, data, optimizer, scaler, amp), warmup, steps, device)
    trainable, total = count_parameters(model, state)
    out = {"model": model_name, "preset": preset, "patch": patch, "batch": batch, "peft": state.spec.label,
           "amp": amp, "step_seconds": statistics.median(times), "patches_per_second": batch / statistics.median(times),
           "peak_rss_bytes": peak_rss_bytes(), "rss_before_training_bytes": idle_rss,
           "trainable_percent": 100.0 * trainable / total}
    if device.type == "cuda":
        out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


def train_comparison(p: dict[str, Any], device: str) -> dict[str, Any]:
    warmup, steps = p["train_steps"]
    rows, ratios = [], []
    for model, preset, patch, batch in p["train_cases"]:
        pair = {}
        for peft in ("petite", "full"):
            pair[peft] = _child("train", {"args": [model, preset, patch, batch, peft, warmup, steps, device]})
            rows.append(pair[peft])
        memory = "cuda_max_allocated_bytes" if "cuda_max_allocated_bytes" in pair["full"] else "peak_rss_bytes"
        ratios.append({"model": model, "preset": preset, "patch": patch, "batch": batch, "memory": memory,
                       "peak_memory_ratio": pair["petite"][memory] / pair["full"][memory],
                       "throughput_ratio": pair["petite"]["patches_per_second"] / pair["full"]["patches_per_second"]})
    return {"rows": rows, "ratios": ratios, "warmup_steps": warmup, "timed_steps": steps}


# -- 4. inference -------------------------------------------------------------------------------


def inference(p: dict[str, Any], device_name: str) -> dict[str, Any]:
    """Whole-volume sliding-window prediction at each scanner's matrix and training window."""
    import numpy as np
    import torch

    from petite_fl.models.registry import build_backbone
    from petite_fl.scanners import available_scanners, get_scanner
    from petite_fl.training.device import resolve_device, use_amp
    from petite_fl.training.inference import predict_volume

    device = resolve_device(device_name)
    amp = use_amp("auto", device)
    torch.manual_seed(0)
    model = build_backbone("unetr", p["infer_preset"]).to(device).eval()
    rows = []
    for name in available_scanners():
        scanner = get_scanner(name)
        roi = tuple(round(s * p["infer_patch_scale"]) for s in scanner.patch)
        volume = np.random.default_rng(0).random(tuple(scanner.matrix), dtype=np.float32)
        predict_volume(model, volume[: roi[0], : roi[1], : roi[2]], roi, device=device, amp=amp)  # warm-up
        begin = time.perf_counter()
        predict_volume(model, volume, roi, device=device, overlap=0.5, sw_batch_size=4, amp=amp)
        rows.append({"scanner": name, "matrix": list(scanner.matrix), "roi": list(roi), "overlap": 0.5,
                     "seconds": time.perf_counter() - begin})
    return {"model": "unetr", "preset": p["infer_preset"], "amp": amp, "rows": rows}


# -- 5. scaling ---------------------------------------------------------------------------------


def extra_sites(home: Path, n: int) -> list[str]:
    """n sites: the five scanners, then the same scanner profiles drawn with other seeds."""
    from petite_fl.config import compose
    from petite_fl.data.synthetic import SynthSpec, dataset_dir, generate, site_manifest

    scanners = ["scanner1", "scanner2", "scanner3", "scanner4", "scanner5"]
    out = []
    for k in range(n):
        replica, index = divmod(k, len(scanners))
        scanner = scanners[index]
        if replica == 0:
            out.append(scanner)
            continue
        cfg = compose("config", [f"paths.cache={home}", "data=tiny", f"data.name=synthetic-tiny-seed{replica}",
                                 f"data.synth.seed={2024 + 1000 * replica}"])
        generate(SynthSpec.from_config(cfg.data.synth), dataset_dir(cfg.data), workers=1)
        out.append(str(site_manifest(cfg.data, scanner)))
    return out


def scaling(home: Path, p: dict[str, Any], device: str) -> dict[str, Any]:
    from simulation.flower_run import LocalSimulation

    s = p["scaling"]
    backbone = _untrained_backbone(home, "unetr", p["fl_preset"])
    gpus = 0.0 if device != "cuda" else 0.1
    cases = [(n, 2) for n in s["sites"]] + [(5, r) for r in s["rounds"] if r != 2]
    rows = []
    with LocalSimulation(echo=lambda line: None) as sim:
        for n, rounds in cases:
            sites = extra_sites(home, n)
            name = f"scaling-{n}-sites-{rounds}-rounds"
            overrides = _fl_overrides(home, backbone, p, sites, rounds, s["steps"], name,
                                      [f"train.device={device}", "federation.val.patches=2",
                                       "train.eval.overlap=0.0"])  # the final test is not what is measured
            _prepare_data(overrides)
            result = sim.run({"overrides": shlex.join(overrides)}, num_supernodes=n, cpus_per_client=1.0,
                             gpus_per_client=gpus)
            summary = json.loads((home / "runs" / "federated" / name / "summary.json").read_text())
            timing = summary["rounds_timing"]
            rows.append({"sites": n, "rounds": rounds, "local_steps": s["steps"], "flower_run_seconds": result.seconds,
                         "round_seconds_mean": statistics.fmean(t["seconds"] for t in timing),
                         "aggregate_ms_mean": 1000 * statistics.fmean(t["aggregate_seconds"] for t in timing),
                         "server_peak_rss_bytes": summary["server_peak_rss_bytes"],
                         "upload_bytes_per_round": summary["upload_bytes_per_round"]})
            print(f"  scaling: {n} sites × {rounds} rounds: {result.seconds:.0f} s", flush=True)
    return {"preset": p["fl_preset"], "rows": rows,
            "note": "one CPU per simulated site; the server peak RSS is the simulation process's (ServerApp + "
                    "Flower's simulation engine)"}


# -- running and reporting ----------------------------------------------------------------------


def _child(worker: str, job: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (its own peak memory, no warm caches)."""
    cmd = [sys.executable, "-m", "simulation.benchmark", "--worker", worker, "--job", json.dumps(job)]
    begin = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(Path(__file__).resolve().parent.parent))
    wall = time.perf_counter() - begin
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT):
            return {**json.loads(line[len(_RESULT):]), "wall_seconds": wall}
    from petite_fl.errors import PetiteError

    raise PetiteError(f"benchmark worker '{worker}' failed (exit {proc.returncode}): {proc.stderr[-2000:]}")


def _worker(name: str, job: dict[str, Any]) -> int:
    if name == "train":
        result = train_speed(*job["args"])
    elif name == "local":
        result = local_equivalent(job["overrides"])
    else:
        raise SystemExit(f"unknown worker {name}")
    print(_RESULT + json.dumps(result), flush=True)
    return 0


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every goal with its measured value and whether it is met."""
    out = []
    for o in results.get("overhead", {}).get("rows", []):
        out.append(("overhead_ratio", "federated overhead (`flwr run` / plain loop)", o["overhead_ratio"],
                    f"{o['sites']} sites × {o['rounds']} rounds × {o['local_steps']} steps, {o['preset']} UNETR"))
    for r in results.get("train", {}).get("ratios", []):
        where = f"{r['model']} {r['preset']}, {r['patch']}³ × {r['batch']}"
        out.append(("peak_memory_ratio", f"peak memory, PETITE / full ({r['memory']})", r["peak_memory_ratio"], where))
        out.append(("throughput_ratio", "training throughput, PETITE / full", r["throughput_ratio"], where))
    rows = []
    for key, label, value, where in out:
        op, bound = GOALS[key]
        met = value <= bound if op == "<=" else value >= bound
        rows.append({"goal": key, "label": label, "where": where, "value": value, "target": f"{op} {bound}",
                     "met": met})
    return rows


def _table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table: header, separator, one line per row (cells already formatted)."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def markdown(report: dict[str, Any]) -> str:
    res, m = report["results"], report["machine"]
    lines = [f"# petite-fl benchmark ({report['mode']})", "",
             f"- machine: {report['machine_label']} (torch {m['torch']}, {m['torch_threads']} threads, {m['os']})",
             f"- command: `{report['command']}`", f"- date: {report['date']}", ""]
    if report["goals"]:
        lines += ["## Goals", "", *_table(["goal", "where", "measured", "target", "met"], [
            [g["label"], g["where"], f"{g['value']:.2f}", g["target"], "yes" if g["met"] else "NO"]
            for g in report["goals"]]), ""]
    if "comm" in res:
        c = res["comm"]
        rows = sorted(c["rows"], key=lambda r: (r["model"], ["single", "mix", "full"].index(r["kind"]), r["spec"]))
        backbones = sorted({(r["model"], r["backbone_bytes"]) for r in c["rows"]})
        lines += ["## Communication per site per round (paper size, fedavg: upload = download)", "",
                  *_table(["backbone", "spec", "trainable %", "upload", "% of backbone", "shared-encoder upload"], [
                      [r["model"], r["spec"] + (" (PETITE)" if r["petite"] else ""), f"{r['trainable_percent']:.3f}",
                       _mib(r["upload_bytes"]), f"{r['percent_of_backbone']:.3f}",
                       _mib(r["shared_encoder_upload_bytes"])] for r in rows]),
                  "", f"{c['mix_count']} Mix-PEFT combinations; the largest sends {c['max_mix_percent']:.2f} % of "
                      "the backbone per round. Backbone sent once per site: "
                  + ", ".join(f"{mdl} {_mib(b)}" for mdl, b in backbones), "",
                  *_table(["backbone", "below float32", "upload", "% of backbone", "saving"], [
                      [o["model"], o["option"], _mib(o["upload_bytes"]), f"{o['percent_of_backbone']:.3f}",
                       f"{100 * o['saving_vs_float32']:.1f} %"] for o in c["options"]])]
        if "quality" in c:
            q = c["quality"]
            lines += ["", f"Effect on quality (`petite compare`, fedavg, {q['rounds']} rounds × "
                          f"{q['local_steps']} steps, five synthetic scanners, test split):", "",
                      *_table(["arm", "head-mask PSNR dB", "upload/round", "bytes saved",
                               "Δ head-mask PSNR vs fedavg [95 %]", "verdict"], [
                          [r["arm"], f"{r['psnr_fg']:.2f}", _mib(r["upload_bytes"]), f"{100 * r['byte_saving']:.1f} %",
                           r["psnr_fg_change"], r["verdict"]] for r in q["rows"]])]
        lines.append("")
    if "overhead" in res:
        o = res["overhead"]
        lines += ["## Federated overhead", "", f"Five sites, PETITE, fedavg; {o['note']}. Phases: start = the "
                  "simulation engine, the apps' imports and the hello exchange (Flower) or setup (plain loop).", "",
                  *_table(["workload", "`flwr run` s", "plain loop s", "ratio", "rounds s (Flower / plain)",
                           "final evaluation s (Flower / plain)", "test PSNR (Flower / plain)"], [
                      [f"{r['rounds']} rounds × {r['local_steps']} steps, {r['preset']}",
                       f"{r['flower_run_seconds']:.1f}", f"{r['local_seconds']:.1f}", f"**{r['overhead_ratio']:.2f}**",
                       f"{r['flower_phase_seconds']['rounds']:.1f} / {r['local_phase_seconds']['rounds']:.1f}",
                       f"{r['flower_phase_seconds']['final_evaluation']:.1f} / "
                       f"{r['local_phase_seconds']['final_evaluation']:.1f}",
                       f"{r['flower_test_psnr']:.2f} / {r['local_test_psnr']:.2f}"] for r in o["rows"]]), ""]
    if "train" in res:
        t = res["train"]
        lines += ["## PEFT vs full fine-tuning", "",
                  f"Median of {t['timed_steps']} steps after {t['warmup_steps']} warm-up steps, each arm in a "
                  "fresh process.", "",
                  *_table(["backbone", "patch × batch", "spec", "trainable %", "step s", "patches/s", "peak memory"], [
                      [f"{r['model']} {r['preset']}", f"{r['patch']}³ × {r['batch']}", r["peft"],
                       f"{r['trainable_percent']:.3f}", f"{r['step_seconds']:.2f}", f"{r['patches_per_second']:.2f}",
                       _mib(r.get("cuda_max_allocated_bytes", r["peak_rss_bytes"]))] for r in t["rows"]]), ""]
    if "inference" in res:
        i = res["inference"]
        lines += ["## Inference (whole volume, sliding window, overlap 0.5)", "",
                  f"UNETR {i['preset']}, amp={i['amp']}.", "",
                  *_table(["scanner", "matrix", "window", "seconds"], [
                      [r["scanner"], "×".join(map(str, r["matrix"])), "×".join(map(str, r["roi"])),
                       f"{r['seconds']:.1f}"] for r in i["rows"]]), ""]
    if "scaling" in res:
        s = res["scaling"]
        lines += ["## Scaling with sites and rounds", "", f"{s['preset']} UNETR, PETITE, fedavg; {s['note']}.", "",
                  *_table(["sites", "rounds", "`flwr run` s", "s/round", "aggregation ms/round", "server peak RSS"], [
                      [r["sites"], r["rounds"], f"{r['flower_run_seconds']:.0f}", f"{r['round_seconds_mean']:.1f}",
                       f"{r['aggregate_ms_mean']:.1f}", _mib(r["server_peak_rss_bytes"])] for r in s["rows"]]), ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulation.benchmark", description=__doc__,
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
        return _worker(args.worker, json.loads(args.job))

    from petite_fl.cli.common import console, run_cli

    def body() -> int:
        import datetime

        import torch

        from petite_fl.atomic import write_json
        from petite_fl.config import compose, expand_path
        from petite_fl.errors import ConfigError
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
        command = shlex.join(["python", "-m", "simulation.benchmark", *(argv if argv is not None else sys.argv[1:])])
        report = {"mode": mode, "command": command,
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
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


if __name__ == "__main__":
    sys.exit(main())
