"""The training recipe (nondeep.train.config): its defaults, every bound of `validate` at its edge, the type
checks of `config_from_dict`, and the YAML loader's refusals. Each refusal is a ConfigError whose one line
says what to fix."""

from __future__ import annotations

import dataclasses

import pytest

from nondeep.train import ConfigError, TrainConfig, config_from_dict, load_config
from nondeep.train.config import compile_mode_for

# The recipe a run without flags trains with. Runs, labs and their reuse checks depend on these values, so a
# change must be deliberate: update this table and say so in the commit.
DEFAULTS = {
    "model": "parnet_tiny", "data": "fashion-mnist", "data_dir": None, "image_size": None, "in_chans": None,
    "out": None, "model_kwargs": {}, "max_train_samples": None, "val_split": 0.1,
    "epochs": 10, "batch_size": 256, "eval_batch_size": 1024, "optimizer": "sgd", "lr": 0.2, "momentum": 0.9,
    "nesterov": True, "weight_decay": 5e-4, "schedule": "onecycle", "warmup_epochs": 0.0,
    "step_milestones": [0.3, 0.6, 0.8], "step_gamma": 0.2, "label_smoothing": 0.1, "grad_clip": 0.0,
    "ema_decay": 0.0, "crop_padding": 2, "flip": True, "cutout": 0, "tta_flip": False,
    "device": "auto", "amp": True, "cpu_bf16": False, "channels_last": False, "compile": False,
    "compile_mode": "auto", "threads": None, "num_workers": 2,
    "seed": 0, "deterministic": False, "checkpoint_every_steps": 0, "checkpoint_every_minutes": 0.0,
    "on_nan": "stop", "progress": True,
}


def test_the_default_recipe_is_pinned_and_valid():
    config = TrainConfig()
    assert config.to_dict() == DEFAULTS
    assert config.validate() is config  # validate returns the config it checked (config_from_dict returns it)
    assert config_from_dict({}).to_dict() == DEFAULTS


def test_mutable_defaults_are_not_shared_between_configs():
    first, second = TrainConfig(), TrainConfig()
    first.step_milestones.append(0.9)
    first.model_kwargs["num_streams"] = 1
    assert second.step_milestones == [0.3, 0.6, 0.8] and second.model_kwargs == {}


# (key, the value at the edge that passes, the nearest value refused, the message's start)
EDGES = [
    ("epochs", 1, 0, "epochs must be >= 1"),
    ("batch_size", 1, 0, "batch sizes must be >= 1"),
    ("eval_batch_size", 1, 0, "batch sizes must be >= 1"),
    ("lr", 1e-12, 0.0, "lr must be > 0"),
    ("val_split", 0.0, 1.0, "val_split must be in [0, 1)"),
    ("val_split", 0.999, -0.001, "val_split must be in [0, 1)"),
    ("max_train_samples", 1, 0, "max_train_samples must be >= 1"),
    ("ema_decay", 0.0, 1.0, "ema_decay must be in [0, 1)"),
    ("ema_decay", 0.9999, -0.1, "ema_decay must be in [0, 1)"),
    ("label_smoothing", 0.0, 1.0, "label_smoothing must be in [0, 1)"),
    ("label_smoothing", 0.99, -0.1, "label_smoothing must be in [0, 1)"),
    ("checkpoint_every_steps", 0, -1, "checkpoint intervals must be >= 0"),
    ("checkpoint_every_minutes", 0.0, -0.5, "checkpoint intervals must be >= 0"),
    ("crop_padding", 0, -1, "crop_padding and cutout must be >= 0"),
    ("cutout", 0, -1, "crop_padding and cutout must be >= 0"),
    ("compile_mode", "reduce-overhead", "fast",
     "compile_mode must be one of auto, default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs"),
    ("image_size", 8, 7, "image_size must be >= 8"),
    ("in_chans", 1, 2, "in_chans must be 1 (grey) or 3 (colour)"),
    ("in_chans", 3, 4, "in_chans must be 1 (grey) or 3 (colour)"),
]


@pytest.mark.parametrize("key,accepted,refused,message", EDGES, ids=[f"{e[0]}={e[2]}" for e in EDGES])
def test_each_bound_accepts_its_edge_and_refuses_the_next_value(key, accepted, refused, message):
    assert getattr(config_from_dict({key: accepted}), key) == accepted
    with pytest.raises(ConfigError) as err:
        config_from_dict({key: refused})
    text = str(err.value)
    assert text == f"{message}; check the config file or the command-line flag"


@pytest.mark.parametrize("key,choices", [("optimizer", ("sgd", "adamw")),
                                         ("schedule", ("cosine", "onecycle", "step", "constant")),
                                         ("on_nan", ("stop", "skip"))])
def test_each_choice_is_accepted_and_anything_else_refused(key, choices):
    for choice in choices:
        assert getattr(config_from_dict({key: choice}), key) == choice
    with pytest.raises(ConfigError, match=f"^{key} must be "):
        config_from_dict({key: "other"})


def test_optional_fields_take_none():
    for key in ("max_train_samples", "image_size", "in_chans", "data_dir", "threads", "out"):
        assert getattr(config_from_dict({key: None}), key) is None


def test_values_apply_over_the_base_without_changing_it():
    base = config_from_dict({"epochs": 3, "lr": 0.05})
    config = config_from_dict({"lr": 0.1}, base)
    assert (config.epochs, config.lr) == (3, 0.1)  # the base's other values stay
    assert (base.epochs, base.lr) == (3, 0.05)     # the base itself is not modified
    assert config is not base


def test_dashes_in_keys_are_the_fields_underscores():
    assert config_from_dict({"batch-size": 64, "label-smoothing": 0.0}).batch_size == 64


def test_an_unknown_key_names_the_closest_field_or_none():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"epoch": 3})
    assert str(err.value) == ("unknown config key 'epoch' (did you mean 'epochs'?); valid keys are the fields of "
                              "nondeep.train.TrainConfig")
    with pytest.raises(ConfigError) as err:
        config_from_dict({"zzzz": 1})
    assert str(err.value) == "unknown config key 'zzzz'; valid keys are the fields of nondeep.train.TrainConfig"


@pytest.mark.parametrize("key,value,expected", [
    ("epochs", "3", "config key 'epochs' must be int, got str '3'"),
    ("epochs", 2.0, "config key 'epochs' must be int, got float 2.0"),
    ("epochs", True, "config key 'epochs' must be int, got bool True"),   # bool is an int to Python, not here
    ("lr", True, "config key 'lr' must be float, got bool True"),
    ("lr", "0.1", "config key 'lr' must be float, got str '0.1'"),
    ("flip", 1, "config key 'flip' must be bool, got int 1"),
    ("model", 3, "config key 'model' must be str, got int 3"),
    ("step_milestones", 0.5, "config key 'step_milestones' must be list[float], got float 0.5"),
    ("step_milestones", [0.5, "a"], "config key 'step_milestones' must be list[float], got list [0.5, 'a']"),
    ("step_milestones", [True], "config key 'step_milestones' must be list[float], got list [True]"),
    ("model_kwargs", [1], "config key 'model_kwargs' must be dict[str, Any], got list [1]"),
    ("model_kwargs", {1: 2}, "config key 'model_kwargs' must be dict[str, Any], got dict {1: 2}"),
    ("max_train_samples", 1.5, "config key 'max_train_samples' must be int | None, got float 1.5"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_key_type_and_value(key, value, expected):
    with pytest.raises(ConfigError) as err:
        config_from_dict({key: value})
    assert str(err.value) == expected


def test_lists_and_dicts_of_the_right_kind_are_accepted():
    config = config_from_dict({"step_milestones": [0.5, 1], "model_kwargs": {"num_streams": 1}})
    assert config.step_milestones == [0.5, 1] and config.model_kwargs == {"num_streams": 1}
    assert config_from_dict({"step_milestones": []}).step_milestones == []


def test_an_int_for_a_float_field_becomes_a_float():
    config = config_from_dict({"lr": 1, "checkpoint_every_minutes": 2, "warmup_epochs": 0})
    assert config.lr == 1.0 and type(config.lr) is float
    assert type(config.checkpoint_every_minutes) is float and type(config.warmup_epochs) is float


def test_load_config_reads_yaml_over_the_base(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("lr: 1\nschedule: step\nstep-milestones: [0.5]\n")
    config = load_config(path, config_from_dict({"epochs": 4}))
    assert (config.lr, config.schedule, config.step_milestones, config.epochs) == (1.0, "step", [0.5], 4)
    assert type(config.lr) is float


def test_an_empty_yaml_file_is_the_base(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path).to_dict() == DEFAULTS


def test_load_config_refusals_are_one_line_naming_the_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(missing)
    assert str(err.value) == f"config file {missing} does not exist"
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)  # a folder is not a config file
    assert str(err.value) == f"config file {tmp_path} does not exist"

    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: [1\n")
    with pytest.raises(ConfigError) as err:
        load_config(broken)
    assert str(err.value).startswith(f"config file {broken} is not valid YAML: ") and "\n" not in str(err.value)

    listing = tmp_path / "list.yaml"
    listing.write_text("- lr\n- 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(listing)
    assert str(err.value) == f"config file {listing} must be a mapping of keys to values"


def test_every_field_is_checked_by_type():
    """A field added without a type hint that _type_ok understands would accept anything: each field refuses
    a value of a foreign type (a set, which no field takes)."""
    for field in dataclasses.fields(TrainConfig):
        with pytest.raises(ConfigError, match=f"config key '{field.name}' must be "):
            config_from_dict({field.name: {1}})


@pytest.mark.parametrize("device, world_size, mode", [("cuda", 1, "reduce-overhead"), ("cuda", 2, "default"),
                                                      ("cpu", 1, "default")])
def test_compile_mode_auto_is_cuda_graphs_on_one_gpu_and_inductors_default_elsewhere(device, world_size, mode):
    assert compile_mode_for("auto", device, world_size) == mode
    assert compile_mode_for("max-autotune", device, world_size) == "max-autotune"  # a mode asked for is kept
