"""The benchmark's report: goals met or not, and benchmark.md with every section's table."""

from __future__ import annotations

from typing import Any

from petite_fl.console import human_bytes

GOALS = {  # figure → (comparison, bound): the targets of issue #7
    "overhead_ratio": ("<=", 1.15),
    "peak_memory_ratio": ("<=", 0.7),
    "throughput_ratio": (">=", 1.2),
    "site_train_ratio": ("<=", 1.3),  # issue #25: a site's round (less its validation) ≤ 1.3 × its bare steps
}


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every goal with its measured value and whether it is met."""
    out = []
    for o in results.get("overhead", {}).get("rows", []):
        out.append(("overhead_ratio", "federated overhead (Flower / plain loop)", o["overhead_ratio"],
                    f"{o['sites']} sites × {o['rounds']} rounds × {o['local_steps']} steps, {o['preset']} UNETR"
                    + (", the default comparison's arm" if o.get("workload") == "compare" else "")))
    for r in results.get("train", {}).get("ratios", []):
        where = f"{r['model']} {r['preset']}, {r['patch']}³ × {r['batch']}"
        out.append(("peak_memory_ratio", f"peak memory, PETITE / full ({r['memory']})", r["peak_memory_ratio"], where))
        out.append(("throughput_ratio", "training throughput, PETITE / full", r["throughput_ratio"], where))
    for r in results.get("site", {}).get("rows", []):
        out.append(("site_train_ratio", "site round less validation / its bare steps", r["train_ratio"],
                    f"{r['scanner']}, {r['local_steps']} steps of {'×'.join(map(str, r['batch']))}, "
                    f"{r['threads']} thread(s)"))
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
    """benchmark.md: the machine and command, the goals, then one table per section measured."""
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
                       human_bytes(r["upload_bytes"]), f"{r['percent_of_backbone']:.3f}",
                       human_bytes(r["shared_encoder_upload_bytes"])] for r in rows]),
                  "", f"{c['mix_count']} Mix-PEFT combinations; the largest sends {c['max_mix_percent']:.2f} % of "
                      "the backbone per round. Backbone sent once per site: "
                  + ", ".join(f"{mdl} {human_bytes(b)}" for mdl, b in backbones), "",
                  *_table(["backbone", "below float32", "upload", "% of backbone", "saving"], [
                      [o["model"], o["option"], human_bytes(o["upload_bytes"]), f"{o['percent_of_backbone']:.3f}",
                       f"{100 * o['saving_vs_float32']:.1f} %"] for o in c["options"]])]
        if "quality" in c:
            q = c["quality"]
            lines += ["", f"Effect on quality (`petite compare`, fedavg, {q['rounds']} rounds × "
                          f"{q['local_steps']} steps, five synthetic scanners, test split):", "",
                      *_table(["arm", "head-mask PSNR dB", "upload/round", "bytes saved",
                               "Δ head-mask PSNR vs fedavg [95 %]", "verdict"], [
                          [r["arm"], f"{r['psnr_fg']:.2f}", human_bytes(r["upload_bytes"]),
                           f"{100 * r['byte_saving']:.1f} %", r["psnr_fg_change"], r["verdict"]] for r in q["rows"]])]
        lines.append("")
    if "overhead" in res:
        o = res["overhead"]
        lines += ["## Federated overhead", "", f"Five sites, PETITE, fedavg; {o['note']}. Phases: start = the "
                  "simulation engine, the apps' imports and the hello exchange (Flower) or setup (plain loop).", "",
                  *_table(["workload", "Flower s (SuperLink + `flwr run`)", "plain loop s", "ratio",
                           "rounds s (Flower / plain)",
                           "final evaluation s (Flower / plain)", "test PSNR (Flower / plain)"], [
                      [f"{r['rounds']} rounds × {r['local_steps']} steps, {r['preset']}"
                       + (" (one arm of the default comparison)" if r.get("workload") == "compare" else ""),
                       f"{r['flower_seconds']:.1f}", f"{r['local_seconds']:.1f}", f"**{r['overhead_ratio']:.2f}**",
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
                       human_bytes(r.get("cuda_max_allocated_bytes", r["peak_rss_bytes"]))] for r in t["rows"]]), ""]
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
                       f"{r['aggregate_ms_mean']:.1f}", human_bytes(r["server_peak_rss_bytes"])]
                      for r in s["rows"]]), ""]
    if "site" in res:
        s = res["site"]
        lines += ["## A site's round vs its bare network steps", "", f"{s['note']}.", "",
                  *_table(["scanner", "threads", "batch", "bare step s", "round / steps", "training part / steps",
                           "first round / steps", "validation s/round"], [
                      [r["scanner"], r["threads"], "×".join(map(str, r["batch"])), f"{r['bare_step_seconds']:.3f}",
                       f"**{r['round_ratio']:.2f}**", f"**{r['train_ratio']:.2f}**", f"{r['first_round_ratio']:.2f}",
                       f"{r['validate_seconds']:.2f}"]
                      for r in s["rows"]]), ""]
    return "\n".join(lines) + "\n"
