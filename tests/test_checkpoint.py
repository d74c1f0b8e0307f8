"""Checkpoints: a flipped byte in any tensor's data (model, optimizer state, EMA, RNG state) is refused by
the checksum, tensors cannot trade places, and what was saved comes back exactly."""

import json
import struct

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from conftest import randomize_bn
from nondeep.checkpoint import (FORMAT, CheckpointError, load_model, load_training_state, model_from_weights,
                                read_checkpoint, save_checkpoint)
from nondeep.models import create_model

META = {"model": "parnet_tiny", "model_kwargs": {"width_multiplier": 0.5, "in_chans": 1}, "step": 3}


def _trained_state():
    """A model after two SGD steps with momentum, its EMA, and an RNG state: every tensor kind a run saves."""
    model = randomize_bn(create_model("parnet_tiny", **META["model_kwargs"]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, 1, 28, 28)).logsumexp(1).mean().backward()
        optimizer.step()
        ema.update_parameters(model)
    return model, optimizer, ema


@pytest.fixture  # per test, so that every test really calls save_checkpoint (mutation tools map calls to tests)
def saved(tmp_path):
    model, optimizer, ema = _trained_state()
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model, META, optimizer, ema, extra_tensors={"torch_rng": torch.get_rng_state()})
    return path, model, optimizer, ema


def _layout(data: bytes) -> tuple[int, dict]:
    """(offset of the data section, header entries by tensor name) of a safetensors file."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    return 8 + n, header


@pytest.mark.parametrize("prefix", ["model.", "optim.", "ema.", "extra.torch_rng"])
def test_a_flipped_byte_in_any_tensor_kind_is_refused(saved, tmp_path, prefix):
    path = saved[0]
    data = bytearray(path.read_bytes())
    start, header = _layout(data)
    keys = [k for k in sorted(header) if k.startswith(prefix)]
    assert keys, f"no {prefix} tensor was saved"
    for key in (keys[0], keys[-1]):  # the first and the last of its kind
        begin, end = header[key]["data_offsets"]
        if end == begin:
            continue
        corrupt = bytearray(data)
        corrupt[start + (begin + end) // 2] ^= 0x01
        target = tmp_path / "corrupt.safetensors"
        target.write_bytes(bytes(corrupt))
        with pytest.raises(CheckpointError, match="fails its checksum"):
            read_checkpoint(target)


def test_two_tensors_trading_places_are_refused(saved, tmp_path):
    """The hash binds each name to its data: swapping the data of two same-shaped tensors is caught."""
    data = bytearray(saved[0].read_bytes())
    start, header = _layout(data)
    (a0, a1), (b0, b1) = header["model.fc.bias"]["data_offsets"], header["ema.module.fc.bias"]["data_offsets"]
    assert a1 - a0 == b1 - b0 and data[start + a0:start + a1] != data[start + b0:start + b1]
    data[start + a0:start + a1], data[start + b0:start + b1] = data[start + b0:start + b1], data[start + a0:start + a1]
    target = tmp_path / "swapped.safetensors"
    target.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its checksum"):
        read_checkpoint(target)


def test_a_tensor_read_as_another_dtype_is_refused(saved, tmp_path):
    """The dtype is hashed with the bytes: the same bytes relabelled from float32 to int32 are caught."""
    data = saved[0].read_bytes()
    entry = b'"model.fc.bias":{"dtype":"F32"'
    assert data.count(entry) == 1
    target = tmp_path / "relabelled.safetensors"
    target.write_bytes(data.replace(entry, entry.replace(b"F32", b"I32")))
    with pytest.raises(CheckpointError, match="fails its checksum"):
        read_checkpoint(target)


def test_a_tensor_with_another_shape_is_refused(saved, tmp_path):
    """The shape is hashed too: the same bytes read as (2, 5) instead of (10,) are caught."""
    data = saved[0].read_bytes()
    start, _ = _layout(data)
    header = data[8:start]
    entry = b'"model.fc.bias":{"dtype":"F32","shape":[10]'
    assert header.count(entry) == 1
    header = header.replace(entry, entry.replace(b"[10]", b"[2,5]"))
    target = tmp_path / "reshaped.safetensors"
    target.write_bytes(struct.pack("<Q", len(header)) + header + data[start:])
    with pytest.raises(CheckpointError, match="fails its checksum"):
        read_checkpoint(target)


def test_a_truncated_file_is_refused_with_the_reason(saved, tmp_path):
    target = tmp_path / "cut.safetensors"
    target.write_bytes(saved[0].read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"cut.safetensors is corrupt or truncated \(\w+Error\): use another"):
        read_checkpoint(target)


def test_the_intact_file_verifies_and_round_trips(saved):
    path, model, optimizer, ema = saved
    tensors, meta = read_checkpoint(path)
    assert meta["step"] == 3 and meta["format"] == FORMAT
    prefixes = {k.split(".")[0] for k in tensors}
    assert prefixes == {"model", "optim", "ema", "extra"}
    fresh_model = create_model("parnet_tiny", **META["model_kwargs"])
    fresh_opt = torch.optim.SGD(fresh_model.parameters(), lr=0.5, momentum=0.9)
    fresh_ema = AveragedModel(fresh_model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    meta, extra = load_training_state(path, fresh_model, fresh_opt, fresh_ema)
    for mine, theirs in ((model, fresh_model), (ema, fresh_ema)):
        for (name, x), (_, y) in zip(mine.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(x, y), name
    assert fresh_opt.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    for index, state in optimizer.state_dict()["state"].items():
        assert torch.equal(fresh_opt.state_dict()["state"][index]["momentum_buffer"], state["momentum_buffer"])
    assert torch.equal(extra["torch_rng"], tensors["extra.torch_rng"])
    load_training_state(path, create_model("parnet_tiny", **META["model_kwargs"]))  # the model alone


def test_load_model_takes_the_model_or_the_ema_weights(saved, tmp_path):
    path, model, _, ema = saved
    plain, _ = load_model(path)
    averaged, _ = load_model(path, use_ema=True)
    assert not plain.training
    for name, value in model.state_dict().items():
        assert torch.equal(plain.state_dict()[name], value), name
        assert torch.equal(averaged.state_dict()[name], ema.module.state_dict()[name]), name
    assert not torch.equal(plain.fc.weight, averaged.fc.weight)  # the EMA really is another set of weights
    no_ema = tmp_path / "no_ema.safetensors"
    save_checkpoint(no_ema, model, META)
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_model(no_ema, use_ema=True)


def test_not_a_nondeep_checkpoint_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, path, metadata={"nondeep": json.dumps({"format": "something-else"})})
    with pytest.raises(CheckpointError, match="not a nondeep checkpoint \\(format 'something-else'\\)"):
        read_checkpoint(path)
    save_file({"w": torch.zeros(2)}, path, metadata={"nondeep": "[1, 2]"})  # JSON, but not an object
    with pytest.raises(CheckpointError, match="not a nondeep checkpoint \\(format None\\)"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.safetensors")


def test_optimizer_state_that_is_not_a_tensor_round_trips(tmp_path):
    """Per-parameter state that is not a tensor (SGD and AdamW keep none, other optimizers do: LBFGS's
    counters) travels in the JSON part and comes back on its parameter."""
    model = create_model("mimic_snn_1k")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    optimizer.step()
    params = list(model.parameters())
    optimizer.state[params[0]]["n_iter"] = 7
    optimizer.state[params[3]]["func_evals"] = 2.5
    optimizer.state[params[2]] = {"n_iter": 1}  # a parameter whose state has no tensor at all
    path = tmp_path / "sgd.safetensors"
    save_checkpoint(path, model, {"model": "mimic_snn_1k", "model_kwargs": {}}, optimizer)
    fresh = torch.optim.SGD(create_model("mimic_snn_1k").parameters(), lr=0.1, momentum=0.9)
    load_training_state(path, create_model("mimic_snn_1k"), fresh)
    state = fresh.state_dict()["state"]
    assert (state[0]["n_iter"], state[3]["func_evals"]) == (7, 2.5) and "n_iter" not in state[1]
    assert state[2] == {"n_iter": 1}
    for index, values in optimizer.state_dict()["state"].items():
        if index != 2:
            assert torch.equal(state[index]["momentum_buffer"], values["momentum_buffer"])


def test_training_state_and_models_load_strictly(saved, tmp_path):
    """A model or EMA that lacks some of the saved tensors (here: the classifier) is refused, and so is a
    checkpoint that lacks some of the model's: nothing is half-loaded."""
    path, model, _, _ = saved
    headless = create_model("parnet_tiny", **META["model_kwargs"])
    headless.reset_classifier(0)
    with pytest.raises(CheckpointError, match="holds another model's weights"):  # one line for the CLI
        load_training_state(path, headless)
    headless_ema = AveragedModel(headless, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_training_state(path, create_model("parnet_tiny", **META["model_kwargs"]), ema=headless_ema)
    incomplete = tmp_path / "headless.safetensors"
    save_checkpoint(incomplete, headless, META, ema=headless_ema)
    for use_ema in (False, True):
        with pytest.raises(CheckpointError, match="does not fit its weights"):  # one line for the CLI
            load_model(incomplete, use_ema=use_ema)


def test_load_model_checks_the_class_count(tmp_path):
    path = tmp_path / "ten.safetensors"
    save_checkpoint(path, create_model("mimic_snn_1k", num_classes=10),
                    {"model": "mimic_snn_1k", "model_kwargs": {"num_classes": 10}})
    with pytest.raises(CheckpointError, match="trained for 10 classes, not 5"):
        load_model(path, num_classes=5)
    assert load_model(path, num_classes=10)[0].num_classes == 10
    assert load_model(path)[0].num_classes == 10
    assert next(load_model(path, map_location="meta")[0].parameters()).is_meta  # map_location is applied


def test_metadata_that_does_not_describe_the_weights_is_one_line_naming_it(monkeypatch):
    """model_from_weights: the model, its kwargs and the loader's first line of complaint are in the message."""
    weights = create_model("mimic_snn_1k").state_dict()
    cases = [({"model": "mimic_snn_1k", "model_kwargs": None},
              r"^checkpoint ck: its metadata \(model 'mimic_snn_1k' with None\) does not fit its weights "
              r"\(model_kwargs is not a mapping\): the file was edited"),
             ({"model": "mimic_snn_1k", "model_kwargs": {"num_classes": 3}},
              r"with \{'num_classes': 3\}\) does not fit its weights \(Error\(s\) in loading state_dict for "
              r"ShallowMimicNet:\)")]
    for meta, message in cases:
        with pytest.raises(CheckpointError, match=message):
            model_from_weights("ck", meta, weights)
    for error, reason in ((ValueError(), "ValueError"), (ValueError("x" * 300), "x" * 160)):
        def fail(*args, error=error, **kwargs):
            raise error
        monkeypatch.setattr("nondeep.models.create_model", fail)
        with pytest.raises(CheckpointError, match=rf"\({reason}\): the file"):  # no message: the error's type
            model_from_weights("ck", {"model": "mimic_snn_1k", "model_kwargs": {}}, weights)


def test_metadata_recording_other_data_than_the_weights_fit_is_refused():
    weights = create_model("mimic_snn_1k", in_chans=1).state_dict()
    meta = {"model": "mimic_snn_1k", "model_kwargs": {"in_chans": 1}}
    for key, value in (("in_chans", 3), ("num_classes", 7)):
        with pytest.raises(CheckpointError, match=rf"records data with {key} {value} but its weights are a model "
                                                  rf"with {key} (1|10): the file was edited"):
            model_from_weights("ck", {**meta, "data": {key: value}}, weights)
    fitting = model_from_weights("ck", {**meta, "data": {"in_chans": 1, "num_classes": 10}}, weights)
    assert (fitting.in_chans, fitting.num_classes) == (1, 10)
    # a model that records neither (torchvision's) is not checked against the data
    resnet = create_model("torchvision:resnet18", num_classes=4)
    model_from_weights("ck", {"model": "torchvision:resnet18", "model_kwargs": {"num_classes": 4},
                              "data": {"in_chans": 3, "num_classes": 4}}, resnet.state_dict())


def test_load_model_and_resume_name_the_file_and_pass_the_metadata_on(tmp_path, saved):
    path = tmp_path / "bare.safetensors"
    save_checkpoint(path, create_model("mimic_snn_1k"), {"model": "mimic_snn_1k"})  # no model_kwargs recorded
    with pytest.raises(CheckpointError, match=rf"^checkpoint {path}: its metadata .*\(model_kwargs is not a mapping\)"):
        load_model(path)
    seen = []
    last = saved[0]
    load_training_state(last, create_model("parnet_tiny", **META["model_kwargs"]), expect=seen.append)
    assert seen[0]["model"] == "parnet_tiny" and seen[0]["step"] == 3


def test_edited_metadata_fails_the_checksum_except_in_the_old_tensor_only_format(saved, tmp_path):
    from safetensors.torch import save_file

    from nondeep.checkpoint import read_safetensors

    tensors, metadata = read_safetensors(saved[0])
    for fmt, refused in ((FORMAT, True), ("nondeep-checkpoint-v1", False)):  # v1's checksum covers tensors only
        meta = dict(json.loads(metadata["nondeep"]), step=99, format=fmt)
        edited = tmp_path / f"{fmt}.safetensors"
        save_file(tensors, edited, metadata={**metadata, "nondeep": json.dumps(meta)})  # the old digest kept
        if refused:
            with pytest.raises(CheckpointError, match="fails its checksum"):
                read_checkpoint(edited)
        else:
            assert read_checkpoint(edited)[1]["step"] == 99


def test_resuming_into_another_model_names_the_loaders_first_complaint(saved):
    other = create_model("parnet_tiny", **dict(META["model_kwargs"], num_classes=3))
    with pytest.raises(CheckpointError, match=r"holds another model's weights \(Error\(s\) in loading state_dict "
                                              r"for ParNet:\): resume it with the model"):
        load_training_state(saved[0], other)
