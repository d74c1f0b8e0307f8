"""benchmarks/bench_train_throughput.py's arithmetic: speed-ups are paired by round and carry an interval, and
the target verdict follows the intervals (met, not met, undecided), never a single median."""

import json

import pytest

from conftest import load_script

script = load_script("bench_train_throughput")


def _rates(fast: list[float]) -> dict[str, list[float]]:
    return {"bare loop": [100.0, 120.0, 110.0], "default": [100.0, 120.0, 110.0], "compile": fast}


def test_speed_ups_are_the_mean_of_the_round_ratios_with_a_t_interval():
    rows = {r["variant"]: r for r in script.speedup_rows(_rates([130.0, 162.0, 137.5]))}
    compile_row = rows["compile"]
    ratios = [1.3, 1.35, 1.25]
    assert compile_row["vs_default"] == pytest.approx(sum(ratios) / 3, abs=1e-3)
    # t(0.975, 2) = 4.3027, std of the ratios = 0.05: half width 0.1242
    low, high = compile_row["vs_default_ci95"]
    assert (low, high) == pytest.approx((1.3 - 0.1242, 1.3 + 0.1242), abs=1e-3)
    assert compile_row["images_per_sec"] == 137.5 and (compile_row["min"], compile_row["max"]) == (130.0, 162.0)
    assert rows["default"]["vs_default"] == 1.0 and rows["default"]["vs_default_ci95"] == [1.0, 1.0]


def test_the_target_verdict_follows_the_intervals():
    met = script.target_verdict(_rates([140.0, 170.0, 155.0]))
    assert met.startswith("Fastest trainer variant: compile, 1.41x (95% CI [1.39, 1.43]) the default and 1.41x "
                          "(95% CI [") and met.endswith(": met.")
    below = script.target_verdict(_rates([110.0, 133.0, 121.0]))
    assert below.endswith(": not met.")
    straddling = script.target_verdict(_rates([130.0, 162.0, 137.5]))  # 1.30x, interval [1.18, 1.42]
    assert straddling.endswith(": undecided: an interval holds its bound (run more rounds).")
    one_round = script.target_verdict({k: v[:1] for k, v in _rates([140.0, 170.0, 155.0]).items()})
    assert one_round.endswith("one round, no interval: run more rounds.")


def test_a_variant_fast_against_the_default_but_slow_against_the_bare_loop_does_not_meet_the_target():
    rates = {"bare loop": [200.0, 210.0, 205.0], "default": [100.0, 105.0, 102.0], "compile": [140.0, 147.0, 143.0]}
    assert script.target_verdict(rates).endswith(": not met.")
    assert script.target_verdict({"bare loop": [1.0, 2.0], "compile": [1.0, 2.0]}) == (
        "No default variant in this run: no speed-up to state.")


def test_the_report_names_its_command_and_a_later_rendering(tmp_path):
    meta = {"cpu": "cpu", "cores": 2, "gpu": "none", "torch": "t", "python": "p", "date": "d", "command": "cmd",
            "device": "cpu", "threads": 2, "model": "m", "batch_size": 4, "samples": 8, "epochs": 2, "rounds": 3,
            "gpu_name": None}
    script.write_report(_rates([140.0, 170.0, 155.0]), meta, tmp_path)
    assert "- command: `cmd`\n" in (tmp_path / "train_throughput.md").read_text()
    assert "- rendered:" not in (tmp_path / "train_throughput.md").read_text()
    script.write_report(_rates([140.0, 170.0, 155.0]), {**meta, "rendered": "later, from the JSON",
                                                          "cpu_simd": "avx2 amx_bf16"}, tmp_path)
    assert "- rendered: later, from the JSON\n" in (tmp_path / "train_throughput.md").read_text()
    assert "- machine: cpu (avx2 amx_bf16), 2 cores, GPU: none\n" in (tmp_path / "train_throughput.md").read_text()
    script.write_report(_rates([140.0, 170.0, 155.0]), {**meta, "device": "cuda:0", "gpu_name": "H200"}, tmp_path)
    assert "device cuda:0 (H200)" in (tmp_path / "train_throughput-gpu.md").read_text()  # the CPU's report kept
    assert json.loads((tmp_path / "train_throughput-gpu.json").read_text())["meta"]["gpu_name"] == "H200"


def test_a_cpu_bf16_variant_is_held_against_the_bare_loop_of_its_precision():
    assert [script.bare_loop_of(v) for v in ("default", "compile", "bf16", "compile+bf16", "bare loop bf16")] == [
        "bare loop", "bare loop", "bare loop bf16", "bare loop bf16", "bare loop bf16"]
    rates = {"bare loop": [100.0, 100.0, 100.0], "bare loop bf16": [150.0, 160.0, 155.0],
             "default": [100.0, 100.0, 100.0], "bf16": [148.0, 158.0, 153.0]}
    rows = {r["variant"]: r for r in script.speedup_rows(rates)}
    assert rows["bf16"]["vs_bare_loop"] == pytest.approx((148 / 150 + 158 / 160 + 153 / 155) / 3, abs=1e-3)
    assert rows["bare loop bf16"]["vs_bare_loop"] == 1.0 and rows["default"]["vs_bare_loop"] == 1.0
    verdict = script.target_verdict(rates)  # 1.53x the default, 0.99x its own bare loop (not 1.53x the float32 one)
    assert verdict.startswith("Fastest trainer variant: bf16, 1.53x (95% CI [")
    assert "the bare loop bf16 over 3" in verdict
    assert verdict.endswith(": met.")


def test_bf16_variants_are_refused_where_the_cpu_has_no_native_bf16(monkeypatch, capsys):
    monkeypatch.setattr(script, "native_cpu_bf16", lambda: False)
    monkeypatch.setattr("sys.argv", ["bench_train_throughput.py", "--variants", "default", "bf16", "--out", "x"])
    with pytest.raises(SystemExit) as exit_:
        script.main()
    assert exit_.value.code == 2
    assert "the bf16 variants need a CPU with native bf16 (AVX512-BF16 or AMX)" in capsys.readouterr().err


def test_each_round_is_written_as_it_ends_so_a_run_cut_short_keeps_its_rounds(tmp_path, monkeypatch):
    monkeypatch.setattr(script, "bare_loop_images_per_sec", lambda *args, **kwargs: 100.0)

    def trainer(model, samples, batch_size, epochs, seed, device, options):
        if seed == 1:  # the second round is cut short (a timeout, a crash)
            raise KeyboardInterrupt
        return 130.0 if options else 100.0

    monkeypatch.setattr(script, "trainer_images_per_sec", trainer)
    monkeypatch.setattr("sys.argv", ["bench_train_throughput.py", "--variants", "default", "compile", "--rounds", "3",
                                     "--out", str(tmp_path)])
    with pytest.raises(KeyboardInterrupt):
        script.main()
    report = json.loads((tmp_path / "train_throughput.json").read_text())
    assert report["meta"]["rounds"] == 1 and report["rates"] == {"bare loop": [100.0], "default": [100.0],
                                                                 "compile": [130.0]}
    assert report["verdict"].endswith("one round, no interval: run more rounds.")
