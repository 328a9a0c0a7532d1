"""One configuration system: Hydra compose over petite_fl/configs/, with user config folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf.errors import ReadonlyConfigError

from petite_fl.config import EXTRA_DIRS_ENV, compose, configs_dir
from petite_fl.errors import ConfigError
from petite_fl.scanners import available_scanners, get_scanner

DATA_CONFIGS = sorted(p.stem for p in (configs_dir() / "data").glob("*.yaml"))


def test_default_config_composes_with_the_five_scanners():
    cfg = compose()
    assert list(cfg.data.synth.scanners) == [f"scanner{i}" for i in range(1, 6)]
    assert cfg.data.loader.scaling == "grey-matter"
    assert compose(overrides=["compare=paper"]).compare.overrides.count("data.loader.scaling=minmax") == 1


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_every_data_config_composes_and_its_splits_add_up(name):
    cfg = compose(overrides=[f"data={name}"])
    synth = cfg.data.synth
    assert sum(synth.splits.values()) == synth.subjects


def test_paper_protocol_is_one_option_away():
    assert compose(overrides=["data=paper"]).data.synth.subjects == 45


def test_overrides_apply_and_config_is_read_only():
    cfg = compose(overrides=["data.synth.seed=7"])
    assert cfg.data.synth.seed == 7
    with pytest.raises(ReadonlyConfigError):
        cfg.data.synth.seed = 8


@pytest.mark.parametrize(
    "override, fragment",
    [("data=nope", "data/nope"), ("data.synth.subjectz=3", "subjectz")],
)
def test_bad_overrides_give_a_config_error_naming_them(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        compose(overrides=[override])


def test_a_user_adds_a_scanner_with_one_yaml_file(tmp_path: Path, monkeypatch):
    text = (configs_dir() / "scanner" / "scanner4.yaml").read_text()
    (tmp_path / "scanner").mkdir()
    (tmp_path / "scanner" / "hospital7.yaml").write_text(text.replace("scanner4", "hospital7"))
    monkeypatch.setenv(EXTRA_DIRS_ENV, str(tmp_path))
    assert "hospital7" in available_scanners()
    assert get_scanner("hospital7").matrix == (128, 128, 90)
    cfg = compose(overrides=["+scanner=hospital7"])
    assert cfg.scanner.name == "hospital7"


def test_flower_run_config_bridges_to_the_same_composition():
    from petite_fl.runconfig import compose_run, overrides_from_run_config

    run_config = {"model": "cvtgan", "train.finetune.steps": 7, "peft.bitfit": False, "train.patch_scale": 0.5,
                  "out": "/tmp/a dir/it's", "data.synth.scanners": "[scanner4,scanner5]"}
    assert overrides_from_run_config(run_config)[:4] == [
        "model=cvtgan", "train.finetune.steps=7", "peft.bitfit=false", "train.patch_scale=0.5"]
    cfg = compose_run(run_config)
    assert cfg == compose(overrides=["model=cvtgan", "train.finetune.steps=7", "peft.bitfit=false",
                                     "train.patch_scale=0.5", "out='/tmp/a dir/it\\'s'",
                                     "data.synth.scanners=[scanner4,scanner5]"])
    assert cfg.out == "/tmp/a dir/it's" and list(cfg.data.synth.scanners) == ["scanner4", "scanner5"]
    with pytest.raises(ConfigError, match="unsupported value"):
        overrides_from_run_config({"x": [1, 2]})
