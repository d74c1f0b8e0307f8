"""nondeep.inference: every form computes the fused model's function, optimize picks the fastest correct one, the
roof is a roof, bad requests are one line and exit 2. CUDA forms skip without a GPU."""

import json
import math

import pytest
import torch
from torch import nn

from conftest import load_script, randomize_bn
from nondeep import create_model, reparameterize_model
from nondeep.bench import benchmark_model, check_row
from nondeep.cli import main
from nondeep.errors import NondeepError
from nondeep.inference import (CPU_FORMS, FORMS, GPU_FORMS, TOLERANCE, available_forms, build_runner,
                               fastest_candidate,
                               measure_roof, optimize, relative_error, requested_pairs)
from nondeep.inference.forms import precision_flags
from nondeep.inference.roof import Roof, RoofComponent, device_info
from nondeep.parallel import DeviceUnavailableError, NotStreamParallelError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
pytestmark = pytest.mark.usefixtures("two_threads")


def _fused_tiny(seed=0):
    model = randomize_bn(create_model("parnet_tiny", in_chans=1), seed=seed).eval()
    return model, reparameterize_model(model)


def _small_convnet():
    """Small enough that torch.compile takes seconds, not minutes, on 2 cores."""
    torch.manual_seed(0)
    return randomize_bn(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                      nn.Linear(8, 10))).eval()


@pytest.mark.parametrize("form", [f for f in CPU_FORMS if f != "compiled"])
def test_every_cpu_form_equals_the_fused_eager_model(form):
    """Property: each CPU form of the fused model, on any batch size and thread count, is the fused model's
    function to float32 rounding (relative error < 1e-5, the documented tolerance)."""
    _, fused = _fused_tiny()
    for threads in (1, 2):
        runner = build_runner(fused, form, "cpu", threads=threads, example=torch.randn(1, 1, 28, 28))
        try:
            for batch in (1, 3):  # a second shape: ONNX Runtime's dynamic batch, recompiles, ...
                x = torch.randn(batch, 1, 28, 28)
                with torch.inference_mode():
                    expected = fused(x)
                got = runner(x)
                assert got.dtype == torch.float32 and got.shape == expected.shape
                assert relative_error(got, expected) < TOLERANCE["float32"] == 1e-5
        finally:
            runner.close()


def test_compiled_form_equals_the_fused_eager_model():
    model = _small_convnet()
    runner = build_runner(model, "compiled", "cpu", threads=1, example=torch.randn(2, 1, 12, 12))
    x = torch.randn(2, 1, 12, 12)
    with torch.inference_mode():
        expected = model(x)
    assert relative_error(runner(x), expected) < 1e-5
    assert runner.build_s > 0 and runner.channels_last


@pytest.fixture(scope="module")
def cpu_roof():
    """The CPU's roof, measured once for the optimize tests (each would measure it twice)."""
    return measure_roof("cpu", ("float32",), threads=2, onnxruntime=True)


def test_optimize_picks_the_fastest_correct_form_and_records_it(cpu_roof):
    model, fused = _fused_tiny()
    fast = optimize(model, torch.randn(1, 1, 28, 28), forms=["eager", "channels_last", "onnxruntime", "streams"],
                    repeats=4, warmup=1, label="parnet_tiny", roof=cpu_roof)
    try:
        timed = [t for t in fast.timings if t["status"] in ("timed", "chosen")]
        # eager/channels_last/onnxruntime on 2 and 1 threads, streams once (it splits the threads).
        assert len(timed) == len(fast.timings) == 7
        chosen = [t for t in timed if t["status"] == "chosen"]
        assert len(chosen) == 1 and chosen[0]["median_ms"] == min(t["median_ms"] for t in timed)
        assert (chosen[0]["form"], chosen[0]["threads"]) == (fast.form, fast.threads)
        assert fast.latency_ms == chosen[0]["median_ms"] and 0 < fast.roof_fraction <= 1
        x = torch.randn(4, 1, 28, 28)  # another batch size than the example's
        with torch.inference_mode():
            expected = fused(x)
        assert relative_error(fast(x), expected) < 1e-5
    finally:
        fast.close()


def test_optimize_never_chooses_a_form_outside_the_tolerance(monkeypatch, cpu_roof):
    """With a zero float32 tolerance only bit-exact forms qualify: the eager form itself (error 0)."""
    monkeypatch.setitem(TOLERANCE, "float32", 0.0)
    model, _ = _fused_tiny()
    fast = optimize(model, torch.randn(1, 1, 28, 28), forms=["eager", "onnxruntime"], thread_counts=[2],
                    repeats=2, warmup=0, roof=cpu_roof)
    statuses = {t["form"]: t["status"] for t in fast.timings}
    assert fast.form == "eager" and statuses["eager"] == "chosen"
    assert statuses["onnxruntime"].startswith("rejected: relative error")


@no_cuda
@pytest.mark.parametrize("form", [f for f in GPU_FORMS if f not in CPU_FORMS])
def test_gpu_form_on_a_cpu_machine_fails_clearly(form, capsys):
    model, _ = _fused_tiny()
    with pytest.raises(DeviceUnavailableError, match="needs a CUDA GPU"):
        optimize(model, torch.randn(1, 1, 28, 28), forms=[form])
    for argv in (["bench", "parnet_tiny", "--forms", form, "--repeats", "1"],
                 ["info", "parnet_tiny", "--latency", "--forms", form]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "needs a CUDA GPU" in err and "use the CPU forms" in err


@no_cuda
def test_half_precision_on_a_cpu_fails_clearly(capsys, monkeypatch):
    bench = ["bench", "parnet_tiny", "--forms", "channels_last", "--repeats", "1", "--dtype"]
    monkeypatch.setattr("nondeep.inference.forms.native_cpu_bf16", lambda: True)
    assert main([*bench, "float16"]) == 2  # no CPU form runs float16
    monkeypatch.setattr("nondeep.inference.forms.native_cpu_bf16", lambda: False)
    assert main([*bench, "bfloat16"]) == 2  # emulated bf16 buys nothing
    for err in capsys.readouterr().err.strip().splitlines():
        assert "does not run natively on this CPU: use float32 (bfloat16 needs a CPU with AVX512-BF16 or AMX)" in err


def test_onnxruntime_is_asked_in_float32_alone_and_refused_without_it(capsys, monkeypatch):
    monkeypatch.setattr("nondeep.inference.forms.native_cpu_bf16", lambda: True)
    pairs = requested_pairs(["onnxruntime", "eager"], ["float32", "bfloat16"])
    assert pairs == [("onnxruntime", "float32"), ("eager", "float32"), ("eager", "bfloat16")]
    assert requested_pairs(["onnxruntime"], ["bfloat16"]) == [("onnxruntime", "bfloat16")]  # for check_form to refuse
    assert main(["bench", "parnet_tiny", "--forms", "onnxruntime", "--dtype", "bfloat16", "--repeats", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "form 'onnxruntime' runs nondeep's float32 export" in err


@pytest.mark.parametrize("form", ["eager", "channels_last", "streams"])
def test_bfloat16_cpu_forms_equal_the_fused_float32_model_within_their_tolerance(form, monkeypatch):
    monkeypatch.setattr("nondeep.inference.forms.native_cpu_bf16", lambda: True)  # emulated: same numbers, slower
    _, fused = _fused_tiny()
    runner = build_runner(fused, form, "cpu", "bfloat16", threads=2, example=torch.randn(1, 1, 28, 28))
    try:
        assert next(runner.module.parameters()).dtype == torch.bfloat16
        x = torch.randn(3, 1, 28, 28)
        with torch.inference_mode():
            expected = fused(x)
        got = runner(x)
        assert got.dtype == torch.float32 and 1e-5 < relative_error(got, expected) < TOLERANCE["bfloat16"] == 5e-2
    finally:
        runner.close()


def test_streams_of_a_model_without_streams_fail_clearly(capsys):
    resnet = create_model("preact_resnet_20", in_chans=1)
    with pytest.raises(NotStreamParallelError, match="no parallel streams"):
        optimize(resnet, torch.randn(1, 1, 28, 28), forms=["streams"])
    assert issubclass(NotStreamParallelError, NondeepError)
    assert main(["bench", "preact_resnet_20", "--input-size", "1", "28", "28", "--forms", "streams",
                 "--repeats", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "parallel streams" in err


def test_default_forms_leave_out_what_the_model_cannot_run():
    resnet = create_model("preact_resnet_20", in_chans=1)
    cpu = torch.device("cpu")
    assert set(available_forms(cpu, resnet)) == set(CPU_FORMS) - {"streams"}
    assert set(available_forms(cpu, _fused_tiny()[1])) == set(CPU_FORMS)
    assert set(available_forms(cpu, _fused_tiny()[1], compiled=False)) == set(CPU_FORMS) - {"compiled"}


# ------------------------------------------------------------------------------------------------ the roof
def test_roof_is_the_highest_measured_rate():
    roof = measure_roof("cpu", threads=1, onnxruntime=True)
    kinds = {(c.kernel, c.precision, c.backend) for c in roof.components}
    assert kinds == {("matmul", "float32", "torch"), ("conv", "float32", "torch"), ("conv", "float32", "onnxruntime")}
    assert roof.gflops("float32") == max(c.gflops for c in roof.components)
    assert all(roof.gflops("float32") >= v for v in roof.components_for("float32").values())


def test_a_form_is_bounded_by_its_precision_or_a_more_precise_one():
    roof = Roof("cuda:0", None, [RoofComponent("matmul", "float32", "torch", "", 50.0),
                                 RoofComponent("conv", "tf32", "torch", "", 200.0),
                                 RoofComponent("matmul", "float16", "torch", "", 700.0),
                                 RoofComponent("conv", "float16", "torch", "", 400.0)])
    assert roof.gflops("float32") == 200.0  # TF32 bounds strict float32 too
    assert roof.gflops("float16") == 700.0
    with pytest.raises(ValueError, match="no roof measured"):
        Roof("cpu", 1, []).gflops("bfloat16")


def test_roof_fraction_above_one_is_a_bug_check_row_says_so():
    """A conv-heavy model measured against the run's roof stays <= 1; a roof set below what the model achieves
    (the old matmul-only roof on a CPU whose conv library beats its BLAS) is rejected by check_row."""
    conv_heavy = nn.Sequential(*[nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()) for _ in range(4)])
    rows = benchmark_model(conv_heavy, input_size=(32, 28, 28), batch_sizes=(1,), threads=1, repeats=3, warmup=1,
                           model_name="conv_heavy")
    for row in json.loads(json.dumps(rows)):
        check_row(row)
        assert row["roof_gflops"] >= max(row["roof_components"].values())
        assert 0 < row["roof_fraction"] <= 1
    low = benchmark_model(conv_heavy, input_size=(32, 28, 28), batch_sizes=(1,), threads=1, repeats=2, warmup=0,
                          peak_gflops=1e-3, model_name="conv_heavy")[0]
    assert low["roof_fraction"] > 1
    with pytest.raises(ValueError, match="roof fraction .* > 1"):
        check_row(low)
    below = dict(rows[0], roof_components={**rows[0]["roof_components"], "conv faster": rows[0]["roof_gflops"] * 2})
    with pytest.raises(ValueError, match="below measured rates"):
        check_row(below)


def test_device_info_names_the_cpu_and_its_flags():
    info = device_info("cpu")
    assert info["cpu_model"] and info["cpus"] == __import__("os").cpu_count()
    assert info["torch_version"] == torch.__version__ and len(info["loadavg"]) == 3
    if info["cpu_flags"]:
        assert set(info["cpu_simd"].split()) <= set(info["cpu_flags"].split())


def test_bench_rows_of_inference_forms_follow_the_schema(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "parnet_tiny", "--input-size", "1", "28", "28", "--forms", "onnxruntime", "streams",
                 "--batch-sizes", "1", "2",
                 "--repeats", "2", "--warmup", "0", "--threads", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["form"] for r in rows[:4]] == ["unfused", "fused", "onnxruntime", "streams"] and len(rows) == 8
    timm_fields = {"model": str, "param_count": float, "infer_samples_per_sec": float, "infer_step_time": float,
                   "infer_batch_size": int, "infer_img_size": int, "infer_gmacs": float}
    for row in rows:
        check_row(row)
        for field, kind in timm_fields.items():
            assert isinstance(row[field], kind), field
        assert row["infer_img_size"] == 28 and row["model"] == "parnet_tiny"
        assert row["loadavg_before"] >= 0 and row["loadavg_after"] >= 0 and row["machine"]
    for row in rows:
        if row["form"] in ("onnxruntime", "streams"):
            assert row["rel_err"] < row["tolerance"] == 1e-5
    sections = {r["form"]: r["section"] for r in rows}
    assert len({sections["fused"], sections["onnxruntime"], sections["streams"]}) == 3
    assert sections["fused"] == sections["unfused"] == "torch 2 threads"


def test_fastest_candidate_for_latency_columns(cpu_roof):
    model, _ = _fused_tiny()
    c = fastest_candidate(model, "parnet_tiny", (1, 28, 28), forms=["eager", "onnxruntime"], repeats=2, warmup=0,
                          roof=cpu_roof)
    assert c.form in ("eager", "onnxruntime") and c.model == "parnet_tiny"
    assert c.form == next(t["form"] for t in c.extra["fastest_of"] if t["status"] == "chosen")
    assert math.isfinite(float(c.fn(torch.randn(1, 1, 28, 28)).sum()))


# ------------------------------------------------------------------------------------------------ CUDA forms
@needs_cuda
@pytest.mark.parametrize("precision", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("form", ["eager", "channels_last", "streams", "graph", "streams_graph"])
def test_every_gpu_form_equals_the_fused_eager_model(form, precision):
    """float32 forms (TF32 off) within 1e-5 of the fused float32 eager model on the GPU; float16 within 1e-2,
    bfloat16 within 5e-2. Graph forms are captured again for a new batch size and still agree."""
    _, fused = _fused_tiny()
    fused = fused.cuda()
    runner = build_runner(fused, form, "cuda", precision, example=torch.randn(1, 1, 28, 28))
    try:
        for batch in (1, 5, 1):
            x = torch.randn(batch, 1, 28, 28, device="cuda")
            with torch.inference_mode(), precision_flags("float32", x.device):
                expected = fused(x)
            assert relative_error(runner(x), expected) < TOLERANCE[precision]
        if FORMS[form].graph:
            assert len(runner.graph.shapes) == 2  # one capture per shape, reused
    finally:
        runner.close()


@needs_cuda
def test_compiled_graph_and_optimize_on_a_gpu():
    model, fused = _fused_tiny()
    fast = optimize(model, torch.randn(1, 1, 28, 28), device="cuda", dtype="float16",
                    forms=["graph", "streams_graph", "compiled_graph"], repeats=5)
    x = torch.randn(2, 1, 28, 28)
    with torch.inference_mode():
        expected = fused(x)
    assert relative_error(fast(x).cpu(), expected) < TOLERANCE[fast.precision]
    assert {t["status"] for t in fast.timings} <= {"timed", "chosen"}, fast.timings


@needs_cuda
def test_streams_graph_on_a_model_without_streams_fails_on_a_gpu():
    with pytest.raises(NotStreamParallelError):
        optimize(create_model("preact_resnet_20", in_chans=1), torch.randn(1, 1, 28, 28), device="cuda",
                 forms=["streams_graph"])


# ------------------------------------------------------------------------------------------------ the script
def test_latency_script_runs_end_to_end_on_a_cpu(tmp_path, monkeypatch):
    """The GPU script's CPU-runnable path: the same code with --device cpu on two small models writes a JSON
    whose rows pass check_row and a markdown with the targets, the output checks and the roof."""
    script = load_script("bench_latency")
    # The roof is measured elsewhere (test_roof_*); a fixed one keeps this plumbing test free of the load.
    fixed = Roof("cpu", 2, [RoofComponent("conv", "float32", "torch", "fixed", 1e4, 2)])
    monkeypatch.setattr(script, "measure_roof", lambda *args, **kwargs: fixed)
    assert script.main(["--device", "cpu", "--models-224", "--models-28", "parnet_tiny", "preact_resnet_20",
                        "--compile-models", "--repeats", "2", "--warmup", "0", "--threads", "2",
                        "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "latency.json").read_text())
    rows = results["rows"]
    for row in rows:
        check_row(row)
    assert {r["model"] for r in rows} == {"parnet_tiny", "preact_resnet_20"}
    tiny_forms = {(r["form"], r["threads"]) for r in rows if r["model"] == "parnet_tiny"}
    assert tiny_forms == {("fused", 2), ("eager", 1), ("channels_last", 2), ("channels_last", 1),
                          ("onnxruntime", 2), ("onnxruntime", 1), ("streams", 2)}
    assert all(r["rel_err"] <= r["tolerance"] for r in rows if "rel_err" in r)
    assert results["meta"]["cpu_model"] and len(results["meta"]["loadavg_after"]) == 3
    text = (tmp_path / "latency.md").read_text()
    assert "parnet_tiny vs preact_resnet_20" in text and "output checks:" in text and "roof" in text
    assert "partial" not in text and not (tmp_path / "latency-partial.json").exists()
    assert not (tmp_path / "latency-headline.png").exists()  # no model with a published ImageNet accuracy
    # --render rewrites the markdown from the JSON alone
    (tmp_path / "latency.md").unlink()
    assert script.main(["--render", str(tmp_path / "latency.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "latency.md").read_text() == text


def test_headline_pairs_published_accuracy_with_the_fastest_checked_form(tmp_path):
    script = load_script("bench_latency")

    def row(model, form, precision, ms, rel_err):
        return {"model": model, "form": form, "precision": precision, "threads": 16, "infer_batch_size": 1,
                "infer_step_time": ms, "rel_err": rel_err, "tolerance": 0.01, "device": "cuda:0"}

    rows = [row("parnet_s", "graph", "float16", 0.9, 1e-3), row("parnet_s", "streams_graph", "float16", 0.6, 1e-3),
            row("torchvision:resnet101", "graph", "float32", 5.2, 0.0),
            row("torchvision:resnet101", "graph", "float16", 1.7, float("nan")),  # overflowed: not a result
            row("parnet_tiny", "graph", "float16", 0.3, 1e-3)]  # no published ImageNet accuracy: left out
    table = script.headline(rows)
    assert [(r["model"], r["published_top1"], r["batch1_ms"]) for r in table] == [
        ("parnet_s", 75.19, 0.6), ("torchvision:resnet101", 77.374, 5.2)]
    assert table[0]["fastest_form"] == "streams_graph (float16)" and table[0]["faster_but_failed_check"] is None
    assert table[1]["faster_but_failed_check"].startswith("graph (float16) 1.700 ms")
    results = {"rows": rows, "meta": {"gpu": "a GPU", "cpu_model": "a CPU", "date": "2026-11-30"}}
    script.plot_headline(results, tmp_path / "headline.png")
    assert (tmp_path / "headline.png").read_bytes()[:4] == b"\x89PNG"


def test_a_latency_run_cut_short_keeps_the_suites_it_measured(tmp_path, monkeypatch):
    script = load_script("bench_latency")
    fixed = Roof("cpu", 1, [RoofComponent("conv", "float32", "torch", "fixed", 1e4, 1)])
    monkeypatch.setattr(script, "measure_roof", lambda *args, **kwargs: fixed)
    real, calls = script.time_models, []

    def time_models(models, *args, **kwargs):
        calls.append([m.label for m in models])
        if len(calls) == 2:
            raise KeyboardInterrupt  # a timeout's SIGTERM, a crash: the second suite never finishes
        return real(models, *args, **kwargs)

    monkeypatch.setattr(script, "time_models", time_models)
    with pytest.raises(KeyboardInterrupt):
        script.main(["--device", "cpu", "--models-224", "preact_resnet_20", "--models-28", "parnet_tiny",
                     "--compile-models", "--repeats", "2", "--warmup", "0", "--threads", "1", "--out", str(tmp_path)])
    assert calls == [["preact_resnet_20"], ["parnet_tiny"]]
    partial = json.loads((tmp_path / "latency-partial.json").read_text())
    assert {r["model"] for r in partial["rows"]} == {"preact_resnet_20"} and not (tmp_path / "latency.json").exists()
    assert {r["input_size"][-1] for r in partial["rows"]} == {224}
    assert (partial["meta"]["models_done"], partial["meta"]["models"]) == (1, 2)
    assert script.main(["--render", str(tmp_path / "latency-partial.json"), "--out", str(tmp_path)]) == 0
    assert "- **partial**: the run stopped after 1 of 2 models" in (tmp_path / "latency.md").read_text()
