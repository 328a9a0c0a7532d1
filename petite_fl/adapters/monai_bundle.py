"""A merged site model as a MONAI bundle: `petite adapters export --merged --format monai-bundle --out DIR`.

MONAI bundles are how imaging models travel between tools: `python -m monai.bundle run
--config_file DIR/configs/inference.json --meta_file DIR/configs/metadata.json --bundle_root DIR
--input SCAN.nii.gz --output_dir OUT` denoises a NIfTI where petite-fl is not installed. The
network is a `torch.export` program (models/model.pt2; torch.jit, MONAI's older model.ts,
is deprecated in torch 2.13), exported from the merged model (`adapters.merge`) with a free
batch size; the card's window, overlap, batch of windows, region and scaling go into the
inference config, MONAI's transforms load, orient, window and save, and the bundle's
scripts/petite_pet.py (numpy/scipy, copied from `adapters/bundle_scripts`) computes the
intensity scaling, which no MONAI transform expresses.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from petite_fl.adapters.bundle_metadata import metadata, readme
from petite_fl.adapters.bundle_scripts.petite_pet import SCALINGS as BUNDLE_SCALINGS
from petite_fl.adapters.catalog import file_sha256
from petite_fl.adapters.export import Source, output_folder
from petite_fl.adapters.merge import NOT_FOLDABLE, TOLERANCE, Merged, merge_adapter
from petite_fl.atomic import atomic_path, write_json
from petite_fl.errors import PetiteError
from petite_fl.peft.spec import PeftSpec
from petite_fl.training.inference import REGIONS

SCRIPTS = Path(__file__).with_name("bundle_scripts")
MODEL = "models/model.pt2"
#: MONAI's bundle convention (configs/logging.conf): its lines on the console
LOGGING = """[loggers]
keys=root

[handlers]
keys=console

[formatters]
keys=plain

[logger_root]
level=INFO
handlers=console

[handler_console]
class=StreamHandler
level=INFO
formatter=plain
args=(sys.stdout,)

[formatter_plain]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""
#: what the card's inference block must say for a bundle to predict as `petite infer --site` does
SETTINGS = ("patch", "scaling", "overlap", "sw_batch_size")


def bundle_settings(source: Source) -> dict[str, Any]:
    """The card's inference settings (window, scaling, overlap, windows per batch, region), or one line."""
    block = dict(source.card.get("inference") or {})
    missing = [k for k in SETTINGS if k not in block]
    if missing:
        raise PetiteError(f"{source.adapter}: its card's inference settings lack {', '.join(missing)}: a MONAI bundle "
                          "needs the window, scaling and overlap its test was measured with")
    block.setdefault("region", "full")
    if block["region"] not in REGIONS:
        raise PetiteError(f"{source.adapter}: the card's inference.region '{block['region']}' is none of "
                          f"{', '.join(REGIONS)}")
    if block["scaling"] not in BUNDLE_SCALINGS:
        raise PetiteError(f"{source.adapter}: the card's inference.scaling '{block['scaling']}' is not one the "
                          f"bundle's scripts/petite_pet.py computes ({', '.join(BUNDLE_SCALINGS)})")
    return block


def refuse_unfoldable(source: Source) -> None:
    """One line where the adapter's method adds computation that no plain network can hold."""
    spec = PeftSpec.from_dict(source.meta["peft"])
    for method in spec.methods():
        if method in NOT_FOLDABLE:
            raise PetiteError(f"{source.adapter}: --format monai-bundle needs the adapter folded into the backbone, "
                              f"and PEFT method '{method}' ({spec.label}) cannot fold: {NOT_FOLDABLE[method]}; "
                              "export it without --merged (backbone + adapter, run by petite infer)")


def exported_program(model: torch.nn.Module, patch: list[int], batch: int) -> tuple[Any, float]:
    """(the `torch.export` program with a free batch size, its max |diff| to `model` on three batch sizes)."""
    model = model.eval()
    dim = torch.export.Dim("batch", min=1, max=4096)
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(max(2, batch), 1, *patch, generator=gen)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: dim},))
        module = program.module()
        diff = max(float((module(x) - model(x)).abs().max())
                   for x in (example, example[:1], torch.rand(3, 1, *patch, generator=gen)))
    return program, diff


def inference_config(settings: dict[str, Any]) -> dict[str, Any]:
    """configs/inference.json: MONAI components, the card's settings at the top where a user overrides them."""
    head = settings["region"] == "head"
    window = {"roi_size": "@patch", "sw_batch_size": "@sw_batch_size", "overlap": "@overlap", "mode": "gaussian"}
    post = [{"_target_": "scripts.petite_pet.FromNetworkd", "keys": "pred"},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "",
             "separate_folder": False, "resample": False, "output_dtype": "$np.float32", "print_log": True}]
    if not head:  # PET activity is non-negative; `region: head` clamps inside the head only (its inferer)
        post.insert(0, {"_target_": "ThresholdIntensityd", "keys": "pred", "threshold": 0.0, "above": True,
                        "cval": 0.0})
    return {
        "imports": ["$import glob", "$import os", "$import numpy as np", "$import torch"],
        "bundle_root": ".",
        "input": "",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "patch": [int(p) for p in settings["patch"]],
        "overlap": float(settings["overlap"]),
        "sw_batch_size": int(settings["sw_batch_size"]),
        "scaling": str(settings["scaling"]),
        "region": str(settings["region"]),
        "datalist": "$sorted(glob.glob(os.path.join(@input, '*.nii*'))) if os.path.isdir(@input) else [@input]",
        "network_def": f"$torch.export.load(os.path.join(@bundle_root, '{MODEL}')).module()",
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS",
             "labels": [["L", "R"], ["P", "A"], ["I", "S"]]},
            {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
            {"_target_": "scripts.petite_pet.ToNetworkd", "keys": "image", "scaling": "@scaling"}]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': f} for f in @datalist]",
                    "transform": "@preprocessing"},
        "inferer": {"_target_": "scripts.petite_pet.HeadRegionInferer" if head else "SlidingWindowInferer",
                    **window},
        "predict": "$lambda d: dict(d, pred=@inferer(d['image'][None].to(@device), @network)[0].cpu())",
        "postprocessing": {"_target_": "Compose", "transforms": post},
        "run": ["$torch.set_grad_enabled(False)", "$[@postprocessing(@predict(d)) for d in @dataset]"],
    }


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def export_monai_bundle(source: Source, out: Path) -> tuple[list[Path], Merged, dict[str, Any]]:
    """The bundle folder; (files written, the merge, the bundle's check figures)."""
    refuse_unfoldable(source)
    settings = bundle_settings(source)
    merged = merge_adapter(source.backbone, source.adapter)
    program, export_diff = exported_program(merged.model, settings["patch"], int(settings["sw_batch_size"]))
    if not export_diff <= TOLERANCE * merged.output_range:
        raise PetiteError(f"{source.adapter}: the exported network differs from the merged one by {export_diff:.3g} "
                          f"(output range {merged.output_range:.3g}): not written")
    out = output_folder(out)
    model_path = out / MODEL
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(model_path) as tmp:
        torch.export.save(program, tmp)
    check = {"merge_max_abs_diff": merged.max_abs_diff, "export_max_abs_diff": export_diff,
             "output_range": merged.output_range}
    paths = [model_path]
    for name in ("__init__.py", "petite_pet.py"):
        _copy(SCRIPTS / name, out / "scripts" / name)
        paths.append(out / "scripts" / name)
    meta = metadata(source, settings, merged.slots, check, file_sha256(source.adapter), file_sha256(model_path))
    for path, data in ((out / "configs" / "metadata.json", meta),
                       (out / "configs" / "inference.json", inference_config(settings))):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, data)
        paths.append(path)
    texts = ((out / "configs" / "logging.conf", LOGGING), (out / "docs" / "README.md", readme(meta, settings)))
    for path, text in texts:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        paths.append(path)
    return paths, merged, check
