"""Time the clinic loop end to end: a 6-frame 192×192×136 PET series on a real Orthanc, denoised with a
site's adapter by `petite infer --site X --from-pacs URL --study UID`, the derived series stored back.

    python benchmarks/clinic_loop.py [--work DIR] [--protocol dicomweb|dimse|both]

What it does (checkout only: it uses the tests' Orthanc launcher and DICOM series writer):
1. a site adapter of scanner1's grid: one local round of the tiny preset on synthetic scanner1 data
   (its window for scanner1, 64³, and overlap 0.5; pretraining and training cut to a few steps: the
   weights' values do not change the time of a prediction), cached in DIR;
2. a real Orthanc (tests/orthanc.py) holding one dynamic PET series of scanner1's grid
   (192×192×136, 1.21875 mm, 6 × 5-min frames: 816 instances) written by tests/pet_dicom.py;
3. `petite infer … --from-pacs … --study …` as a user runs it (a new process: imports included), timed
   per protocol; the study's series are listed before and after.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from orthanc import PASSWORD, USER, start_orthanc  # noqa: E402
from pet_dicom import Geometry, known_frames, write_pet_dicom  # noqa: E402

SITE, SHAPE, VOXEL_MM = "scanner1", (192, 192, 136), 1.21875


def site_adapter(work: Path) -> tuple[Path, Path]:
    """(cache, site root) holding scanner1's adapter of one short local round (made once)."""
    cache, root = work / "cache", work / "sites"
    if any(root.glob(f"{SITE}/**/*.safetensors")):
        return cache, root
    from test_federation_run import federate, run_config

    rc = run_config(cache, strategy="local", source=SITE, **{
        "data.synth.scanners": f"[{SITE}]", "federation.sites": f"[{SITE}]", "federation.rounds": 1,
        "federation.local_steps": 1, "train.patch_scale": 1.0, "federation.run_name": "clinic-bench",
        "overrides": f"federation.val.patches=2 federation.site_root={root}"})
    rc.pop("train.eval.overlap")  # the tests' 0.0; the card then carries the preset's (0.5, the paper's)
    federate(rc, [{"partition-id": 0, "num-partitions": 1}])
    return cache, root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/petite-clinic-bench"))
    parser.add_argument("--protocol", choices=("dicomweb", "dimse", "both"), default="both")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    cache, root = site_adapter(args.work)
    print(f"site adapter ready ({time.perf_counter() - begin:.0f} s)")
    series_dir = args.work / "series"
    if not series_dir.is_dir():
        spacing = (VOXEL_MM,) * 3
        write_pet_dicom(series_dir, known_frames(SHAPE, 6), geometry=Geometry(spacing=spacing,
                                                                             origin=(-117.0, -117.0, -82.0)))
    files = sorted(series_dir.glob("*.dcm"))
    env = {**os.environ, "PETITE_PACS_USERNAME": USER, "PETITE_PACS_PASSWORD": PASSWORD}
    failed = False
    for protocol in ("dicomweb", "dimse") if args.protocol == "both" else (args.protocol,):
        server = start_orthanc(args.work / f"orthanc-{protocol}-{os.getpid()}")
        try:
            server.upload(files)
            import pydicom

            study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            before = server.series_of_study(study)
            url = server.dicomweb if protocol == "dicomweb" else server.dimse
            cmd = [str(Path(sys.executable).parent / "petite"), "infer", "--site", SITE, "--site-root", str(root),
                   "--device", "cpu", "--from-pacs", url, "--study", study, f"paths.cache={cache}"]
            start = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=args.work)
            seconds = time.perf_counter() - start
            after = server.series_of_study(study)
            counts = {s[-12:]: len(server.series_instances(s)) for s in after}
            failed = failed or done.returncode != 0
            print(f"{protocol}: exit {done.returncode}, {seconds:.1f} s PACS → PACS for {len(files)} instances "
                  f"({SHAPE[0]}×{SHAPE[1]}×{SHAPE[2]}, 6 frames); study series before {[s[-12:] for s in before]}, "
                  f"after {counts} (instances)")
            print("  " + "\n  ".join(line for line in (done.stdout + done.stderr).splitlines() if line.strip()))
        finally:
            server.stop()
    return 1 if failed else 0  # a time of a failed run is no figure


if __name__ == "__main__":
    raise SystemExit(main())
