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
    cfg = load_config(f, ["train.steps=20", "train.discrete=true", "train.time_sampling=uniform"],
                      sde={"name": "subvp"})
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


@pytest.mark.parametrize("text, key, line, first", [
    ("sde: {name: vp}\ntrain: {steps: 5}\nsde: {name: ve}\n", "sde", 3, 1),
    ("train:\n  steps: 5\n  lr: 1e-3\n  steps: 7\n", "steps", 4, 2),
    ("sde: {name: vp, name: ve}\n", "name", 1, 1),
])
def test_duplicate_yaml_keys_are_rejected(tmp_path, text, key, line, first):
    # Regression (issue 30.18): PyYAML kept the last value, so the second 'sde' trained VE.
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value) == (f"{f} is not valid YAML: duplicate key {key!r} on line {line} "
                            f"(first on line {first})")


def test_yaml_merge_keys_and_repeated_values_are_not_duplicates(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: {<<: {steps: 5, lr: 1e-3}, steps: 6}\n")  # a key beats a merged one
    cfg = load_config(f)
    assert cfg.train.steps == 6 and cfg.train.lr == 1e-3
    f.write_text("data: {name: npz, path: a.npz}\ntrain: {steps: 5, seed: 5}\n")
    assert load_config(f).train.seed == 5


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


@pytest.mark.parametrize("override", [
    "model.dropout=nan", "train.lr=nan", "train.grad_clip=nan", "train.t_eps=nan",
    "train.lr=.nan", "train.ema_decay=NaN", "train.p_mean=nan", "sde.beta_max=inf",
    "train.max_seconds=.inf", "train.grad_clip=-.inf", "model.fourier_scale=infinity",
])
def test_non_finite_floats_are_rejected(override):
    # Regression: NaN passed every `value < min` check, so model.dropout=nan reached the U-Net.
    with pytest.raises(ConfigError, match="expected a finite number") as e:
        load_config(None, [override])
    assert str(e.value).startswith(override.split("=")[0] + ":") and "\n" not in str(e.value)


@pytest.mark.parametrize("override, message", [
    ("train.steps=.nan", "train.steps: expected an integer"),  # was "cannot convert float NaN"
    ("train.steps=.inf", "train.steps: expected an integer"),  # was an OverflowError
    ("model.emb_dim=3", "model.emb_dim: 3 must be even"),
    ("sde.beta_min=30", "sde.beta_min=30.0 must be below sde.beta_max=20.0"),
    ("sde.sigma_max=0.001", "sde.sigma_min=0.01 must be below sde.sigma_max=0.001"),
])
def test_more_bad_values_are_config_errors(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_name_choices_come_from_the_registries():
    from dataclasses import fields

    from sde_gen.app.config import AUTOENCODER, DataConfig, ModelConfig, SDEConfig
    from sde_gen.app.factory import NET_ARGS, SDE_ARGS
    from sde_gen.data.registry import DATASETS, IMAGE_DATASETS
    from sde_gen.data.toy2d import TOY2D
    from sde_gen.nets import NETWORKS
    from sde_gen.sde import SDES

    def choices(cls):
        return next(f for f in fields(cls) if f.name == "name").metadata["choices"]

    assert choices(SDEConfig) == tuple(SDES) and set(SDE_ARGS) == set(SDES)
    assert choices(ModelConfig) == (*NETWORKS, AUTOENCODER) and set(NET_ARGS) == set(NETWORKS)
    assert choices(DataConfig) == tuple(DATASETS) == TOY2D + IMAGE_DATASETS


def test_config_does_not_import_the_image_loaders():
    import subprocess
    import sys

    code = ("import sys, sde_gen.app.config, sde_gen.app.factory, sde_gen.data; "
            "assert 'sde_gen.data.images' not in sys.modules, 'images imported'; "
            "assert 'PIL' not in sys.modules, 'PIL imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=CONFIGS.parent)


@pytest.mark.parametrize("override, message", [
    ("model.num_heads=3", "model.num_heads=3 does not divide the 32 channels"),
    ("model.ch=15", "model.ch=15 must be even"),
    ("model.ch_mult=[]", "model.ch_mult must list at least one level"),
    ("model.ch_mult=[1,1,1,1,1]", "images of 8x8 pixels do not halve 4 times"),
])
def test_unet_that_cannot_be_built_is_a_user_error(override, message):
    # Each was a ValueError from inside the network's constructor; now named by its config key.
    from sde_gen.app.factory import build_model
    from sde_gen.errors import UserInputError

    cfg = load_config(None, ["data.name=digits", "model.name=unet", "model.ch=16",
                             "model.ch_mult=[1,2]", "model.attn_resolutions=[4]",
                             "model.num_res_blocks=1", override])
    with pytest.raises(UserInputError, match=message.replace("[", r"\[")):
        build_model(cfg)
