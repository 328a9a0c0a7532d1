"""What a federated run measured, and the files and table it leaves behind.

Rows are kept per concern (training per site and round, evaluation, bytes, refusals,
final per-subject test metrics), checkpointed with the run, and written as CSV/JSON after
every round so that a killed run still leaves its curves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petite_fl.atomic import write_csv, write_json
from petite_fl.console import console, human_bytes
from petite_fl.training.inference import ALL_METRICS
from petite_fl.training.inference import METRICS as METRIC_NAMES

#: (site, split, declared subjects) → what the site's row weighs in the run's mean
Weigh = Callable[[str, str, int], int]


@dataclass
class RunLog:
    train_rows: list[dict[str, Any]] = field(default_factory=list)
    eval_rows: list[dict[str, Any]] = field(default_factory=list)
    transfer_rows: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    subject_rows: list[dict[str, Any]] = field(default_factory=list)  # final test, per subject position
    lora_a_rows: list[dict[str, Any]] = field(default_factory=list)  # how far shared LoRA A moved (drift.py)

    def to_dict(self) -> dict[str, Any]:
        return {"train": self.train_rows, "eval": self.eval_rows, "transfer": self.transfer_rows,
                "rejected": self.rejected, "subjects": self.subject_rows, "lora_a": self.lora_a_rows}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunLog:
        return cls(list(data["train"]), list(data["eval"]), list(data["transfer"]), list(data.get("rejected", [])),
                   list(data.get("subjects", [])), list(data.get("lora_a", [])))

    def eval_row(self, rnd: int, site: str, split: str, m: Mapping[str, Any], weigh: Weigh | None = None) -> None:
        """A per-round validation row from a train reply's metrics (when the site validated); `weigh`
        bounds its declared subject count to what the row may weigh in the mean (`server.weights`)."""
        n = m.get(f"{split}_subjects", 1)
        if f"{split}_psnr" not in m or isinstance(n, bool) or not isinstance(n, int) or n < 1:
            return
        self.eval_rows.append({"round": rnd, "site": site, "split": split, "subjects": n,
                               "weight": weigh(site, split, n) if weigh else n,
                               **{k: float(m[f"{split}_{k}"]) for k in METRIC_NAMES if f"{split}_{k}" in m}})

    def final(self, rnd: int, site: str, means: Mapping[str, Mapping[str, float]],
              subjects: list[dict[str, float]], weigh: Weigh | None = None) -> None:
        """A site's final evaluation replaces whatever an earlier start of the run recorded."""
        self.eval_rows = [r for r in self.eval_rows if not (r["site"] == site and r["round"] == rnd)]
        self.eval_rows += [{"round": rnd, "site": site, "split": split, **row,
                            "weight": weigh(site, split, int(row["subjects"])) if weigh else row["subjects"]}
                           for split, row in means.items()]
        self.subject_rows = [r for r in self.subject_rows if r["site"] != site]
        self.subject_rows += [{"site": site, "split": "test", "position": i, **row} for i, row in enumerate(subjects)]

    def weighted_mean(self, rnd: int, split: str) -> dict[str, float]:
        """The sites' means weighted by their bounded subject counts (a claim of 10⁹ subjects buys nothing)."""
        rows = [r for r in self.eval_rows if r["round"] == rnd and r["split"] == split]
        weights = [r.get("weight", r["subjects"]) for r in rows]  # a log from before the bound: its counts
        total = sum(weights)
        if not total:
            return {}
        # the truth's metrics only where every site has them (simulated sites)
        return {k: sum(r[k] * w for r, w in zip(rows, weights, strict=True)) / total for k in ALL_METRICS
                if all(k in r for r in rows)}

    def val_line(self, rnd: int) -> str:
        mean = self.weighted_mean(rnd, "val")
        if not mean:
            return ""
        sites = ", ".join(f"{r['site']} {r['psnr']:.2f}" for r in self.eval_rows
                          if r["round"] == rnd and r["split"] == "val")
        return (f"; val after round {rnd}: PSNR {mean['psnr']:.2f} dB, SSIM {mean['ssim']:.4f}, "
                f"NRMSE {mean['nrmse']:.4f} (weighted mean; PSNR {sites})")

    def write(self, run_dir: Path, summary: dict[str, Any] | None = None) -> None:
        write_csv(run_dir / "train.csv", self.train_rows)
        write_csv(run_dir / "metrics.csv", self.eval_rows)
        if self.subject_rows:
            write_csv(run_dir / "subjects.csv", self.subject_rows)
        write_csv(run_dir / "transfer.csv", self.transfer_rows)
        if self.lora_a_rows:
            write_csv(run_dir / "lora_a_drift.csv", self.lora_a_rows)
        write_json(run_dir / "log.json", self.to_dict())
        if summary is not None:
            write_json(run_dir / "summary.json", summary)

    def site_summary(self, site: str, adapter: str | None, backbone_bytes: int) -> dict[str, Any]:
        peft = [r for r in self.transfer_rows if r["what"] in ("peft", "peft-secagg") and r["site"] == site]
        test = next((r for r in self.eval_rows if r["site"] == site and r["split"] == "test"), None)
        return {"test": test, "test_subjects": [{k: v for k, v in r.items() if k not in ("site", "split")}
                                                for r in self.subject_rows if r["site"] == site],
                "adapter": adapter, "backbone_bytes": backbone_bytes,
                "upload_bytes_per_round": max((r["bytes_up"] for r in peft), default=0),
                "download_bytes_per_round": max((r["bytes_down"] for r in peft), default=0)}


def print_summary(summary: dict[str, Any]) -> None:
    """The run's test table, as the user sees it at the end of `flwr run`."""
    from rich.table import Table

    table = Table(title=f"{summary['strategy']} · {summary['peft']} · {summary['rounds']} rounds "
                        f"× {summary['local_steps']} steps (test split)")
    for col in ("site", "PSNR dB", "SSIM", "NRMSE", "upload/round", "backbone received"):
        table.add_column(col, justify="right" if col != "site" else "left")
    for site, s in summary["sites"].items():
        t = s["test"] or {}
        table.add_row(site, f"{t.get('psnr', float('nan')):.2f}", f"{t.get('ssim', float('nan')):.4f}",
                      f"{t.get('nrmse', float('nan')):.4f}", human_bytes(s["upload_bytes_per_round"]),
                      human_bytes(s["backbone_bytes"]))
    mean = summary["test_mean"]
    if mean:
        table.add_row("mean", f"{mean['psnr']:.2f}", f"{mean['ssim']:.4f}", f"{mean['nrmse']:.4f}", "", "")
    console.print(table)
    size = f" ({summary['backbone']}" + (")" if summary.get("backbone", "").endswith("paper") else
                                          ", a demonstration size; the paper-size share: `petite compare`'s report)")
    console.print(f"upload per site per round: {summary['upload_percent_of_backbone']:.3f} % of this run's backbone"
                  f"{size if summary.get('backbone') else ''}; "
                  f"results in {summary['run_dir']}")
