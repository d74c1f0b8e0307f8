"""nondeep's models under timm's contract: head resets keep device and dtype, pruning leaves no unused
parameter, scripting works, and (with timm installed) registration, configs and timm's reparameterisation."""

import copy
import subprocess
import sys

import pytest
import torch
from conftest import randomize_bn

import nondeep
from nondeep import NondeepError, create_model, reparameterize_model

HEADED = ["parnet_tiny", "wrn_16_1", "preact_resnet_20", "resnet18_small_image", "mimic_snn_1k"]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def _input(model: torch.nn.Module, batch: int = 2, side: int | None = None, **like) -> torch.Tensor:
    """A batch of the model's configured input size, or `side` x `side` (small ImageNet-form inputs)."""
    c, h, w = model.pretrained_cfg["input_size"]
    size = (c, side, side) if side else (c, h, w)
    return torch.randn(batch, *size, generator=torch.Generator().manual_seed(0)).to(**like)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", HEADED)
def test_reset_classifier_keeps_device_dtype_and_mode(name, device):
    """A float64 model (on the GPU where there is one) in eval mode keeps all three through a head reset, and
    the new head runs: (N, 5) float64 logits."""
    model = create_model(name).to(device=device, dtype=torch.float64).eval()
    model.reset_classifier(0)
    model.reset_classifier(5)
    head = model.get_classifier()
    assert head.weight.dtype == torch.float64 and head.weight.device.type == device and not head.training
    out = model(_input(model, device=device, dtype=torch.float64))
    assert out.shape == (2, 5) and out.dtype == torch.float64


@pytest.mark.parametrize("name", ["parnet_tiny", "parnet_s", "wrn_16_1", "resnet18_small_image"])
def test_global_pool_off_gives_the_unpooled_map(name):
    """global_pool='' with no head returns forward_features' map; a new linear head brings the pooling back;
    '' with a head is refused (the head takes pooled features)."""
    kwargs = {"width_multiplier": 0.25} if name == "parnet_s" else {}
    model = create_model(name, num_classes=0, global_pool="", **kwargs).eval()
    x = _input(model, 1)
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_features(x))
        assert model(x).shape[-2:] == model.pretrained_cfg["pool_size"]
        x = x[..., :64, :64]  # the rest at a smaller size: ImageNet-form ParNet-S is slow at 224
        model.reset_classifier(3)
        assert model(x).shape == (1, 3)
    with pytest.raises(ValueError, match="needs num_classes=0"):
        model.reset_classifier(3, "")
    with pytest.raises(ValueError, match="'avg' or ''"):
        create_model(name, global_pool="max", **kwargs)


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_pruned_parnet_gives_every_parameter_a_gradient(index):
    """Pruned to one level, ParNet keeps exactly what that level needs: one backward reaches every parameter
    left (DDP without find_unused_parameters), the tap equals the unpruned model's, and forward_features
    ends at it. Level 1 keeps stream 1 but not stream 0."""
    model = randomize_bn(create_model("parnet_tiny")).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = model.forward_intermediates(x, intermediates_only=True)[index]
    pruned = copy.deepcopy(model)
    take = pruned.prune_intermediate_layers([index])
    with torch.no_grad():
        got = pruned.forward_intermediates(x, indices=take, intermediates_only=True)[0]
        assert torch.equal(got, want) and torch.equal(pruned.forward_features(x), want)
    pruned.train()
    pruned.forward_intermediates(x, indices=take, intermediates_only=True)[0].sum().backward()
    assert [n for n, p in pruned.named_parameters() if p.grad is None] == []
    kept_streams = {n.split(".")[1] for n, _ in pruned.named_parameters() if n.startswith("streams.")}
    assert kept_streams == ({str(index)} if index < 2 else {"0", "1", "2"})


def test_features_only_out_index_1_has_no_unused_parameter():
    features = create_model("parnet_tiny", features_only=True, out_indices=(1,))
    sum(m.sum() for m in features(torch.randn(2, 3, 16, 16))).backward()
    assert [n for n, p in features.named_parameters() if p.grad is None] == []


def test_prune_head_false_needs_the_head_level():
    model = create_model("parnet_tiny")
    assert model.prune_intermediate_layers([3], prune_head=False) == [3] and isinstance(model.fc, torch.nn.Linear)
    with pytest.raises(ValueError, match="prune_head=False"):
        model.prune_intermediate_layers([1], prune_head=False)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("name", HEADED)
def test_models_script_with_the_same_outputs(name):
    """torch.jit.script compiles every family (the input check included) and gives the eager outputs."""
    model = randomize_bn(create_model(name)).eval() if "mimic" not in name else create_model(name).eval()
    scripted = torch.jit.script(model)
    x = _input(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)


def test_first_conv_names_a_real_conv():
    for name in ["parnet_tiny", "parnet_s", "wrn_16_1", "resnet18_small_image", "mimic_cnn_8k"]:
        with torch.device("meta"):
            model = create_model(name)
        assert model.pretrained_cfg["first_conv"] + ".weight" in model.state_dict(), name
    with torch.device("meta"):
        assert create_model("mimic_snn_1k").pretrained_cfg["first_conv"] is None  # no conv to adapt


# ---- with timm ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def timm():
    timm = pytest.importorskip("timm", reason="timm is not installed (it is in the dev extra)")
    from nondeep.timm_compat import register_with_timm

    register_with_timm()
    return timm


def test_registration_lists_every_model_and_twice_is_harmless(timm):
    from nondeep.timm_compat import register_with_timm

    assert register_with_timm() == nondeep.list_models()
    assert timm.list_models("parnet*") == nondeep.list_models("parnet*")
    assert set(nondeep.list_models()) <= set(timm.list_models())


# preact_resnet_1001 shares preact_resnet_164's config object and takes long to build even on the meta device.
@pytest.mark.parametrize("name", [n for n in nondeep.list_models() if n != "preact_resnet_1001"])
def test_timm_pretrained_cfg_matches_the_built_model(timm, name):
    """For every registered model: timm's config is nondeep's (input size, mean, std), its first_conv and
    classifier name real weights, and pool_size is the unpooled map's size (fixed_input_size for flat nets)."""
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    ours = nondeep.get_default_cfg(name)
    assert (cfg["input_size"], cfg["mean"], cfg["std"]) == (ours["input_size"], ours["mean"], ours["std"])
    model = timm.create_model(name, device="meta")
    state = model.state_dict()
    assert cfg["classifier"] + ".weight" in state
    if cfg["first_conv"] is not None:
        assert cfg["first_conv"] + ".weight" in state
    features = model.forward_features(torch.empty(1, *cfg["input_size"], device="meta"))
    if features.dim() == 4:
        assert tuple(features.shape[-2:]) == cfg["pool_size"] and not cfg["fixed_input_size"]
    else:
        assert cfg["pool_size"] is None and cfg["fixed_input_size"]


def test_timm_create_model_options(timm):
    model = timm.create_model("wrn_16_1", num_classes=7, device="meta", dtype=torch.float64)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("meta", torch.float64)}
    assert model.num_classes == 7 and model.pretrained_cfg["architecture"] == "wrn_16_1"
    features = timm.create_model("parnet_tiny", features_only=True, out_indices=(1, 3))
    assert features.feature_info.channels() == [32, 128]
    assert [m.shape[1] for m in features(torch.randn(1, 3, 32, 32))] == [32, 128]
    with pytest.raises(NondeepError, match="no pretrained weights"):
        timm.create_model("parnet_tiny", pretrained=True)
    with pytest.raises(NondeepError, match="features_only"):
        timm.create_model("mimic_cnn_8k", features_only=True)


@pytest.mark.parametrize("name,kwargs", [("parnet_tiny", {}), ("parnet_s", {"width_multiplier": 0.25}),
                                         ("parnet_tiny", {"block_type": "rep"})])
def test_timm_reparameterize_fuses_as_nondeep_does(timm, name, kwargs):
    """timm's reparameterize_model (which benchmark.py --reparam and onnx_export.py --reparam call) folds the
    same modules as nondeep's: identical state_dict keys, and outputs within 1e-5 relative."""
    from timm.utils.model import reparameterize_model as timm_reparameterize

    model = randomize_bn(create_model(name, **kwargs)).eval()
    ours, theirs = reparameterize_model(model), timm_reparameterize(model)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert not any(".conv3x3." in k for k in theirs.state_dict())
    x = _input(model, side=64 if name == "parnet_s" else None)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert ((a - b).abs().max() / a.abs().max()).item() < 1e-5


def test_runner_registers_before_the_script(timm, tmp_path):
    """`python -m nondeep.timm_compat SCRIPT ARGS` runs a timm script that takes nondeep's names."""
    script = tmp_path / "script.py"
    script.write_text("import sys, timm\nprint(timm.create_model(sys.argv[1]).pretrained_cfg['architecture'])\n")
    out = subprocess.run([sys.executable, "-m", "nondeep.timm_compat", str(script), "parnet_tiny"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "parnet_tiny"


def test_small_image_resnet_heads_names_and_pooling():
    """The small-image ResNet's own code: a 1-class head is a linear head, errors name the model (`resnet` by
    default), pre_logits gives the pooled features, and a head reset keeps the pooling and records its classes."""
    from nondeep.errors import InputShapeError
    from nondeep.models.resnet_small import SmallImageResNet

    one = SmallImageResNet([1, 1, 1, 1], num_classes=1).eval()
    assert isinstance(one.fc, torch.nn.Linear) and one.fc.out_features == 1
    assert one(torch.randn(2, 3, 8, 8)).shape == (2, 1)
    with pytest.raises(InputShapeError, match="^resnet expects"):
        one(torch.randn(3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    assert one.forward_head(one.forward_features(x), pre_logits=True).shape == (2, 512)
    unpooled = SmallImageResNet([1, 1, 1, 1], num_classes=0, global_pool="")
    unpooled.reset_classifier(0)  # None keeps the current pooling: still none
    assert unpooled.global_pool == "" and unpooled.num_classes == 0
    unpooled.reset_classifier(5)
    assert unpooled.global_pool == "avg" and unpooled.num_classes == 5 and unpooled.fc.out_features == 5
