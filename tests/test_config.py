from pathlib import Path

import pytest
import yaml

from sde_gen.app.config import Config, ConfigError, load_config, parse_override, to_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_default_yaml_equals_dataclass_defaults():
    assert to_dict(load_config(CONFIGS / "toy2d.yaml")) == to_dict(Config())


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    load_config(path)


def test_overrides_and_sections_apply_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("sde: {name: ve}\ntrain: {steps: 10, lr: 1e-3}\n")
    cfg = load_config(f, ["train.steps=20", "train.discrete=true", "train.time_sampling=uniform"], sde={"name": "subvp"})
    assert cfg.sde.name == "subvp"  # section values beat the file
    assert cfg.train.steps == 20 and cfg.train.discrete is True  # --set beats both
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stepz=5", "unknown key 'train.stepz'"),
        ("trian.steps=5", "unknown section 'trian'"),
        ("train.steps=abc", "train.steps: expected an integer"),
        ("train.steps=2.5", "train.steps: expected an integer"),
        ("train.steps=0", "train.steps: 0 is below the minimum 1"),
        ("train.ema_decay=1.5", "train.ema_decay: 1.5 is above the maximum 1.0"),
        ("sde.name=vpp", "sde.name: 'vpp' is not one of vp, subvp, ve"),
        ("train.discrete=3", "train.discrete: expected true or false"),
        ("steps=3", "must look like section.key"),
        ("train.steps", "must look like section.key=value"),
    ],
)
def test_bad_override_is_one_line_error(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    f.write_text("model:\n  widht: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'model.widht'"):
        load_config(f)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_config_is_frozen_and_yaml_roundtrips(tmp_path):
    cfg = load_config(None, ["train.steps=7"])
    with pytest.raises(Exception):
        cfg.train.steps = 8  # frozen dataclass
    assert parse_override("train.lr=1e-4")[:2] == ("train", "lr")
    assert load_config(None, ["train.lr=1e-4"]).train.lr == 1e-4
    text = yaml.safe_dump(to_dict(cfg))
    f = tmp_path / "r.yaml"
    f.write_text(text)
    assert load_config(f) == cfg
