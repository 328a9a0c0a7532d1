"""A MONAI bundle's configs/metadata.json and docs/README.md, from an adapter's model card.

The fields MONAI's metadata schema (meta_schema_20240725) requires, the card's metrics as
`eval_metrics`, what the model is for and where it stops, and a `petite_fl` block naming
the adapter, the backbone it was trained on and the exported network by SHA-256.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from petite_fl import __version__
from petite_fl.adapters.export import Source

SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
BUNDLE_VERSION = "1.0.0"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _tensor(patch: list[int], what: str) -> dict[str, Any]:
    return {"type": "image", "format": "magnitude", "modality": "PT", "num_channels": 1,
            "spatial_shape": [int(p) for p in patch], "dtype": "float32", "value_range": [0, 1],
            "is_patch_data": True, "channel_def": {"0": what}}


def _limitations(card: dict[str, Any], settings: dict[str, Any]) -> str:
    scans = card.get("training_scans")
    trained = f"{scans} training scan(s)" if scans is not None else "an unrecorded number of training scans"
    return (f"Fine-tuned on {trained} of one site ({card.get('site')}): other scanners, reconstructions, "
            "tracers or count levels than that site's were not tested. Inputs are 3D brain PET volumes of "
            f"activity; the input's intensity is scaled by '{settings['scaling']}' before the network and the "
            "prediction scaled back. A research model, not validated for diagnosis.")


def metadata(source: Source, settings: dict[str, Any], slots: dict[str, list[str]], check: dict[str, float],
             adapter_sha256: str, model_sha256: str) -> dict[str, Any]:
    """configs/metadata.json: MONAI's fields from the card, and petite-fl's provenance by hash."""
    card = source.card
    site, run, peft = card.get("site") or source.site, card.get("run") or source.run, card.get("peft")
    backbone = source.backbone_meta
    description = (f"Short-scan to long-scan denoising of 3D brain PET: site {site}'s {peft} adapter "
                   f"(run {run}, strategy {card.get('strategy')}, rounds {card.get('rounds')}) folded into the "
                   f"{backbone['model']} backbone {backbone['sha256'][:12]}…, exported by petite-fl {__version__}.")
    return {
        "schema": SCHEMA,
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: f"exported by petite-fl {__version__} from site {site}, run {run}"},
        "monai_version": _version("monai"),
        "pytorch_version": _version("torch"),
        "numpy_version": _version("numpy"),
        "required_packages_version": {"scipy": _version("scipy"), "nibabel": _version("nibabel")},
        "name": f"petite-fl {site} {run}",
        "task": "Denoising of short-acquisition 3D brain PET (predicts the long scan)",
        "description": description,
        "authors": f"site {site} (federated fine-tuning with petite-fl)",
        "copyright": f"site {site}, whose scans trained this model",
        "data_type": "nibabel",
        "image_classes": "one channel: a short-scan PET volume (activity), scaled by the bundle",
        "pred_classes": "one channel: the denoised PET volume, in the input's units",
        "eval_metrics": dict(card.get("metrics") or {}),
        "intended_use": f"Research: denoising short PET scans of site {site}'s scanner and protocol.",
        "limitations": _limitations(card, settings),
        "references": ["PETITE: parameter-efficient fine-tuning of transformers for low-count PET denoising",
                       "petite-fl: federated PEFT fine-tuning of 3D PET denoising"],
        "network_data_format": {"inputs": {"image": _tensor(settings["patch"], "PET (short scan)")},
                                "outputs": {"pred": _tensor(settings["patch"], "PET (denoised)")}},
        "petite_fl": {"version": __version__, "site": site, "run": run, "strategy": card.get("strategy"),
                      "peft": peft, "peft_spec": source.meta.get("peft"), "rounds": card.get("rounds"),
                      "training_scans": card.get("training_scans"), "created": card.get("created"),
                      "adapter_sha256": adapter_sha256, "backbone_sha256": backbone["sha256"],
                      "backbone_model": backbone["model"], "backbone_config": backbone.get("config"),
                      "merge_slots": slots, "model_pt2_sha256": model_sha256, "check": check,
                      "inference": settings, "card": card},
    }


def readme(meta: dict[str, Any], settings: dict[str, Any]) -> str:
    """docs/README.md: what the bundle is and the one command that runs it."""
    p = meta["petite_fl"]
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(meta["eval_metrics"].items())) or "none recorded"
    return f"""# {meta['name']}

{meta['description']}

## Run it

Needs MONAI {meta['monai_version']} (with `fire` for the command line), PyTorch {meta['pytorch_version']},
nibabel and scipy; petite-fl is not needed.

```
python -m monai.bundle run --config_file BUNDLE/configs/inference.json --meta_file BUNDLE/configs/metadata.json \\
    --bundle_root BUNDLE --input SCAN.nii.gz --output_dir OUT
```

`--input` takes one NIfTI file or a folder of them; each prediction is written as OUT/<input name>
(float32, the input's affine and orientation). Settings the model's test was measured with
(override with `--patch`, `--overlap`, `--sw_batch_size`, `--scaling`): window {settings['patch']},
overlap {settings['overlap']}, {settings['sw_batch_size']} windows per batch, region {settings['region']},
scaling `{settings['scaling']}` (scripts/petite_pet.py).

## Model

- network: models/model.pt2 (`torch.export`, any batch size; sha256 {p['model_pt2_sha256']})
- backbone: {p['backbone_model']} {p['backbone_sha256']}
- adapter: {p['peft']} of site {p['site']}, run {p['run']} (sha256 {p['adapter_sha256']})
- metrics on the site's own splits: {metrics}

## Intended use and limitations

{meta['intended_use']} {meta['limitations']}
"""
