"""The GPU check's report (benchmarks/gpu_check.py collect): written whatever each part did."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def test_the_report_keeps_what_a_failed_or_timed_out_part_left_and_names_each_outcome(tmp_path: Path):
    parts, run = tmp_path / "out" / "parts", tmp_path / "run"
    _write(parts / "machine.status.json", {"rc": 0, "seconds": 5, "limit": 40})
    _write(parts / "machine.json", {"gpu": "NVIDIA H200"})
    _write(parts / "train.status.json", {"rc": 1, "seconds": 9, "limit": 110})
    _write(parts / "train.out", "line\n" * 30 + "torch.OutOfMemoryError: CUDA out of memory\n")
    # The federated part was killed at its limit after round 2 of 3: the run log written after each round remains.
    _write(parts / "federated.status.json", {"rc": 124, "seconds": 165, "limit": 165})
    _write(parts / "federated.json", {"run_dir": str(run), "phase": "federation"})
    val = lambda rnd, site, n, psnr, ssim: {"round": rnd, "site": site, "split": "val", "subjects": n,  # noqa: E731
                                            "psnr": psnr, "ssim": ssim, "nrmse": 0.1}
    _write(run / "log.json", {
        "eval": [val(0, "scanner1", 1, 20.0, 0.50), val(0, "scanner2", 2, 23.0, 0.80),
                 val(2, "scanner1", 1, 21.0, 0.60), val(2, "scanner2", 2, 24.0, 0.85)],
        "transfer": [{"round": 0, "site": s, "what": "backbone", "bytes_down": 400, "bytes_up": 0}
                     for s in ("scanner1", "scanner2")]
                    + [{"round": r, "site": s, "what": "peft", "bytes_down": 3, "bytes_up": 5}
                       for r in (1, 2) for s in ("scanner1", "scanner2")]})

    _gpu_check().collect(tmp_path / "out")

    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    status = {name: p["status"] for name, p in report["parts"].items()}
    assert status == {"machine": "ok", "train": "failed (exit 1)", "federated": "timed out at its 165 s limit",
                      "tests": "not run"}
    assert report["parts"]["train"]["output_tail"][-1] == "torch.OutOfMemoryError: CUDA out of memory"
    assert report["machine"] == {"gpu": "NVIDIA H200"} and report["train"] is None and report["tests"] is None
    rounds = {r["round"]: r for r in report["federated"]["rounds_table"]}
    assert rounds[0]["val"]["psnr"] == pytest.approx((20.0 + 2 * 23.0) / 3)  # weighted by subjects, as the run log
    assert rounds[0]["bytes_all_sites"] == {"backbone_down": 800}
    assert rounds[1]["bytes_all_sites"] == {"peft_down": 6, "peft_up": 10} and "val" not in rounds[1]
    change = report["federated"]["val_change"]
    assert (change["from_round"], change["to_round"], change["improved"]) == (0, 2, True)
    assert change["psnr"] == pytest.approx(1.0) and change["ssim"] == pytest.approx(0.2 / 3)


def test_test_outcomes_are_read_from_xdist_lines_too(tmp_path: Path):
    """The suite runs under pytest-xdist by default, whose -v lines put the status first."""
    _write(tmp_path / "parts" / "tests.out", "\n".join([
        "[gw0] [ 50%] PASSED tests/test_metrics.py::test_psnr[random-0-cuda] ",
        "[gw1] [100%] FAILED tests/test_metrics.py::test_bad_shapes_are_refused[args0-differ in shape] ",
        "============================= 1 failed, 1 passed in 10.05s =============================="]))
    view = _gpu_check().tests_view(tmp_path)
    assert view["counts"] == {"passed": 1, "failed": 1} and view["summary"] == "1 failed, 1 passed in 10.05s"
    assert view["not_passed"] == {"tests/test_metrics.py::test_bad_shapes_are_refused[args0-differ in shape]": "FAILED"}


def test_test_outcomes_are_read_from_pytest_lines_even_without_its_closing_summary(tmp_path: Path):
    _write(tmp_path / "parts" / "tests.out", "\n".join([
        "tests/test_metrics.py::test_psnr[random-0-cuda] PASSED [  5%]",
        "tests/test_metrics.py::test_psnr[random-0-cpu] PASSED [ 10%]",
        "tests/test_metrics.py::test_bad_shapes_are_refused[args0-differ in shape] PASSED [ 15%]",
        "tests/test_jobs.py::test_cuda_requested_on_a_machine_without_it_is_a_clear_error SKIPPED (has CUDA) [ 20%]",
        "tests/test_jobs.py::test_infer_keeps_the_input_affine FAILED [ 25%]"]))  # then killed: no summary line
    view = _gpu_check().tests_view(tmp_path)
    assert view["counts"] == {"passed": 3, "skipped": 1, "failed": 1} and view["summary"] is None
    assert view["cuda_tests"] == {"tests/test_metrics.py::test_psnr[random-0-cuda]": "PASSED",
                                         "tests/test_jobs.py::test_cuda_requested_on_a_machine_without_it_is_a_"
                                         "clear_error": "SKIPPED"}
    assert view["not_passed"]["tests/test_jobs.py::test_infer_keeps_the_input_affine"] == "FAILED"


@pytest.mark.slow
def test_the_tiny_dry_run_of_the_whole_script_runs_every_part_and_writes_its_report(tmp_path: Path):
    """GPU_CHECK_TINY=1 on this CPU: the device run's code paths, shrunk (several minutes on 2 cores)."""
    env = {**os.environ, "GPU_CHECK_TINY": "1", "GPU_CHECK_TIME_SCALE": "8", "GPU_CHECK_ROUNDS": "1",
           "GPU_CHECK_SITE": str(tmp_path / "site"), "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "TMPDIR": str(tmp_path)}
    subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, check=True, timeout=3600)
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert {name: p["status"] for name, p in report["parts"].items()} == dict.fromkeys(report["parts"], "ok")
    assert len(report["train"]["rows"]) == 4 and len(report["train"]["ratios"]) == 4
    assert [r["round"] for r in report["federated"]["rounds_table"]] == [0, 1]
    assert report["federated"]["summary"]["test_mean"]["psnr"] > 0 and report["tests"]["counts"]["passed"] > 0
    assert (tmp_path / "out" / "gpu_check.log").read_text().count("=== part") == 8  # start and end of each
