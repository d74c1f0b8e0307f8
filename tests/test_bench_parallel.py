"""Stream-parallel inference (nondeep.parallel) and the benchmark (nondeep.bench, `nondeep bench`)."""

import copy
import json
import threading

import pytest
import torch

from conftest import randomize_bn
from nondeep import bench, bench_candidates, create_model, reparameterize_model
from nondeep.bench import FORMS, ROW_FIELDS, benchmark_model, check_row, speedup
from nondeep.timing import summarize
from nondeep.cli import main
from nondeep.errors import NondeepError
from nondeep.inference.forms import precision_flags
from nondeep.parallel import DeviceUnavailableError, NotStreamParallelError, StreamParallel

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = pytest.mark.usefixtures("two_threads")


def _tiny(num_streams, fused, seed=0):
    model = randomize_bn(create_model("parnet_tiny", in_chans=1, num_streams=num_streams), seed=seed).eval()
    return reparameterize_model(model) if fused else model


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("num_streams", [1, 2, 3, 4])
def test_threads_mode_equals_the_sequential_model(num_streams, fused):
    model = _tiny(num_streams, fused)
    x = torch.randn(2, 1, 16, 16)
    with torch.inference_mode():
        expected = model(x)
        for overlap in (True, False):
            # Each stream on as many intra-op threads as the sequential run: the same kernels, bitwise equal.
            exact = StreamParallel(model, "threads", overlap=overlap, threads_per_stream=2)
            # The default splits the 2 threads: kernels on 1 thread block their sums differently (the
            # sequential model itself differs by ~1e-7 between 1 and 2 threads).
            split = StreamParallel(model, "threads", overlap=overlap)
            try:
                for _ in range(2):  # the second call reuses the worker threads
                    assert torch.equal(exact(x), expected)
                    torch.testing.assert_close(split(x), expected, rtol=0, atol=1e-5)
            finally:
                exact.close(), split.close()


def test_threads_mode_keeps_thread_counts_and_grad_mode():
    model = _tiny(3, fused=False).train()  # batch statistics; autograd through the worker threads
    parallel = StreamParallel(model, "threads", threads_per_stream=1)
    x = torch.randn(2, 1, 16, 16)
    try:
        out = parallel(x)
        assert out.requires_grad  # grad mode is thread-local: the workers must run in the caller's
        out.sum().backward()
        assert all(p.grad is not None for p in model.streams.parameters())
        torch.testing.assert_close(out, model(x), rtol=0, atol=1e-5)
        # The workers' set_num_threads(1) leaves the caller's count and the default of new threads alone.
        assert torch.get_num_threads() == 2
        seen = []
        t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        t.start(), t.join()
        assert seen == [2]
    finally:
        parallel.close()


def test_fork_mode_matches_sequential():
    model = _tiny(3, fused=True)
    x = torch.randn(2, 1, 28, 28)
    parallel = StreamParallel(model, "fork")
    with torch.inference_mode():
        torch.testing.assert_close(parallel(x), model(x), rtol=0, atol=1e-5)
    assert len(list(parallel.parameters())) == len(list(model.parameters()))  # the scripted copy is not a submodule


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
@pytest.mark.parametrize("mode", ["cuda_streams", "devices"])
def test_gpu_modes_fail_clearly_without_cuda(mode):
    with pytest.raises(DeviceUnavailableError, match="needs CUDA"):
        StreamParallel(_tiny(3, fused=True), mode)
    assert issubclass(DeviceUnavailableError, NondeepError)


def test_not_a_parnet_and_bad_mode():
    with pytest.raises(NotStreamParallelError):
        StreamParallel(create_model("preact_resnet_20"))
    with pytest.raises(ValueError, match="mode"):
        StreamParallel(_tiny(3, fused=True), "processes")


@needs_cuda
@pytest.mark.parametrize("mode", ["cuda_streams", "devices"])
def test_gpu_modes_match_sequential(mode):
    model = _tiny(3, fused=True)
    x = torch.randn(2, 1, 28, 28, device="cuda")
    # Against the same model run sequentially on the same GPU, TF32 off: the same kernels, one stream or several
    # (a CPU reference differs by ~1e-3 relative where cuDNN picks TF32 kernels).
    with torch.inference_mode(), precision_flags("float32", x.device):
        expected = copy.deepcopy(model).cuda()(x)
        devices = ["cuda:0"] * 3 if mode == "devices" else None
        parallel = StreamParallel(model, mode, devices=devices)
        got = parallel(x)
        torch.cuda.synchronize()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_benchmark_rows_follow_the_schema():
    rows = benchmark_model("parnet_tiny", input_size=(1, 28, 28), batch_sizes=(1, 2), threads=2, repeats=3,
                           warmup=1, stream_parallel=True)
    assert {r["form"] for r in rows} == {"unfused", "fused", "streams"} <= set(FORMS)
    assert len(rows) == 6
    for row in json.loads(json.dumps(rows)):  # survives JSON
        check_row(row)
        assert set(ROW_FIELDS) <= set(row)
        assert row["model"] == "parnet_tiny" and row["depth"] == 12 and row["threads"] == 2
        assert row["roof_fraction"] == pytest.approx(row["achieved_gflops"] / row["roof_gflops"])
        # The roof is the highest of the rates measured in this run (matmul and conv, float32 on a CPU).
        assert row["roof_gflops"] == max(row["roof_components"].values())
        assert {k.split()[0] for k in row["roof_components"]} == {"matmul", "conv"}
        assert row["precision"] == "float32" and row["machine"] and row["section"]
        assert row["infer_samples_per_sec"] == pytest.approx(1000 * row["infer_batch_size"] / row["infer_step_time"])
    streams = [r for r in rows if r["form"] == "streams"]
    assert all(r["rel_err"] <= r["tolerance"] == 1e-5 for r in streams)
    # The streams form switches thread counts inside its calls: it is timed in a section of its own.
    assert {r["section"] for r in streams}.isdisjoint({r["section"] for r in rows if r["form"] != "streams"})
    fused = next(r for r in rows if r["form"] == "fused")
    unfused = next(r for r in rows if r["form"] == "unfused")
    assert fused["param_count"] < unfused["param_count"] and fused["infer_gmacs"] < unfused["infer_gmacs"]
    assert speedup(rows, "unfused", "fused") == unfused["infer_step_time"] / fused["infer_step_time"]
    assert speedup(rows, "unfused", "missing") is None
    with pytest.raises(ValueError, match="lacks"):
        check_row({k: v for k, v in rows[0].items() if k != "roof_fraction"})


def test_summarize_is_the_median_and_the_inclusive_deciles():
    lat = summarize([5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 6.0, 9.0, 7.0, 8.0], batch_size=4)
    assert (lat.median_ms, lat.repeats, lat.batch_size) == (5.5, 10, 4)
    assert lat.p10_ms == pytest.approx(1.9) and lat.p90_ms == pytest.approx(9.1)  # 1 + 0.1 * 9, 10 - 0.1 * 9
    one = summarize([3.0], batch_size=1)
    assert (one.median_ms, one.p10_ms, one.p90_ms) == (3.0, 3.0, 3.0)


def test_benchmark_model_without_fusable_blocks_is_eager():
    rows = benchmark_model("preact_resnet_20", input_size=(1, 28, 28), batch_sizes=(1,), repeats=2, warmup=0,
                           peak_gflops=100.0)
    assert [r["form"] for r in rows] == ["eager"] and rows[0]["roof_gflops"] == 100.0


def test_models_timed_side_by_side_share_their_sections_and_rounds(monkeypatch):
    """time_models puts every form of every model into the same sections, so a slow spell hits them alike."""
    seen = []
    real = bench_candidates.time_sections

    def spy(sections, *args, **kwargs):
        seen.append({name: len(fns) for name, (_, fns) in sections.items()})
        return real(sections, *args, **kwargs)

    monkeypatch.setattr(bench_candidates, "time_sections", spy)
    models = [bench.prepare_model(name, (1, 28, 28), threads=2, fused_and_unfused=False, forms=["channels_last"])
              for name in ("parnet_tiny", "preact_resnet_20")]
    rows = bench.time_models(models, batch_sizes=(1, 2), threads=2, repeats=2, warmup=0, peak_gflops=1e4)
    assert seen == [{"torch 2 threads": 4}] * 2  # one timing per batch size, both models' two forms in it
    assert [(r["model"], r["infer_batch_size"], r["form"]) for r in rows] == [
        (m, b, f) for m, f0 in (("parnet_tiny", "fused"), ("preact_resnet_20", "eager"))
        for b in (1, 2) for f in (f0, "channels_last")]
    assert all(r["rel_err"] <= r["tolerance"] for r in rows if r["form"] == "channels_last")
    assert len({r["date"] for r in rows if r["infer_batch_size"] == 1}) == 1
    with pytest.raises(NondeepError, match="repeats"):
        bench.check_timing((1,), 0, 0)


def test_cli_bench_writes_json_md_and_plot(tmp_path, capsys):
    out, md, plot = tmp_path / "bench.json", tmp_path / "bench.md", tmp_path / "plot.png"
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"model": "parnet_tiny", "test_accuracy": 0.91}))
    code = main(["bench", "parnet_tiny", "--repeats", "3", "--batch-sizes", "1", "--json", str(out),
                 "--md", str(md), "--accuracy", str(summary), "--plot", str(plot)])
    assert code == 0
    rows = json.loads(out.read_text())
    assert [r["form"] for r in rows] == ["unfused", "fused"]
    for row in rows:
        check_row(row)
    printed = capsys.readouterr().out
    assert "roof_fraction" in printed and "| parnet_tiny" in printed
    assert "test_accuracy" in md.read_text() and plot.stat().st_size > 1000
    assert f"\n- date: {rows[0]['date']}\n" in md.read_text()  # where and when: provenance of every number


def test_cli_bench_unknown_model_is_one_line_exit_2(capsys):
    assert main(["bench", "parnet_tinyy", "--repeats", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown model" in err and "parnet_tiny" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_cli_bench_cuda_without_cuda_is_one_line_exit_2(capsys):
    assert main(["bench", "parnet_tiny", "--device", "cuda", "--repeats", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA" in err

