"""A lab's runs on its executor (issue 19): the same rows from 1 worker, 2 worker processes and Ray; a failed
run reported while the others finish; a lost worker retried once; bad executor input refused in one line."""

import importlib.util
import json
import os
from pathlib import Path

import pytest

from nondeep.cli import main
from nondeep.experiments import executor
from nondeep.experiments._lab import Budget, LabError, Run, RunsFailed, lab_meta, run_all
from nondeep.experiments.executor import ExecutorError, Failure, Plan, StopLab, execute, plan_for

RUNS = [Run("snn", "mimic_snn_1k"), Run("parnet", "parnet_tiny", {"width_multiplier": 0.5})]
SAME = ("model", "seed", "test_accuracy", "best_test_accuracy", "fused_test_accuracy", "val_accuracy", "steps",
        "params", "val_curve")  # what a run's result is, not where or how fast it ran


def budget(data, **kwargs) -> Budget:
    return Budget(epochs=1, max_train_samples=64, seeds=1, data_dir=str(data), threads=1, progress=False, **kwargs)


def results(rows):
    return [{k: row[k] for k in SAME} for row in rows]


@pytest.fixture(scope="module")
def sequential(tiny_fashion, tmp_path_factory):
    """The lab's rows from one worker, in this process (as a lab ran before executors)."""
    return results(run_all(tmp_path_factory.mktemp("seq") / "lab", RUNS, budget(tiny_fashion, workers=1)))


def test_the_plan_follows_the_flags(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert plan_for(Budget()) == Plan("local", 1, ("cpu",), None)  # CPU default: one run at a time, torch's threads
    assert plan_for(Budget(workers=4)) == Plan("local", 4, ("cpu",) * 4, 2)  # each run its share of the cores
    assert plan_for(Budget(workers=2, threads=3)).threads == 3
    monkeypatch.setattr(executor.torch.cuda, "device_count", lambda: 3)
    assert plan_for(Budget(device="cuda")) == Plan("local", 3, ("cuda:0", "cuda:1", "cuda:2"), 2)  # one run per GPU
    assert plan_for(Budget(device="cuda", workers=4)).devices == ("cuda:0", "cuda:1", "cuda:2", "cuda:0")
    assert plan_for(Budget(device="cuda:1")).devices == ("cuda:1",)
    assert plan_for(Budget(executor="ray", threads=2)) == Plan("ray", None, (), 2, None)
    with pytest.raises(ExecutorError, match="--workers must be at least 1"):
        plan_for(Budget(workers=0))
    meta = lab_meta("blocks", Budget(workers=2, threads=1), ["nondeep"], 0.0)["execution"]  # in every report
    assert meta == {"executor": "local", "workers": 2, "devices": ("cpu", "cpu"), "threads": 1, "address": None}
    assert Plan(**meta).text() == "local, 2 workers on cpu (1 thread(s) each)"


def test_two_worker_processes_give_the_rows_of_one(tiny_fashion, tmp_path, sequential):
    rows = run_all(tmp_path / "lab", RUNS, budget(tiny_fashion, workers=2))
    assert results(rows) == sequential  # same seeds, same data order, same threads: the same numbers, in order
    assert [r["device"] for r in rows] == ["cpu", "cpu"]


def test_a_failed_run_is_reported_and_the_others_finish(tiny_fashion, tmp_path, capsys):
    runs = [Run("bad", "mimic_snn_1k", {"no_such_argument": 1}), RUNS[0]]
    with pytest.raises(RunsFailed, match="1 of 2 runs failed.*bad seed 0: --model-kwargs do not fit") as err:
        run_all(tmp_path / "lab", runs, budget(tiny_fashion, workers=1))
    assert len(str(err.value).splitlines()) == 1
    assert (tmp_path / "lab" / "snn" / "seed0" / "summary.json").is_file()  # the good run finished
    failed = json.loads((tmp_path / "lab" / "failed.json").read_text())
    assert [f["name"] for f in failed["failed"]] == ["bad seed 0"] and failed["runs"] == 2
    assert "bad seed 0" in capsys.readouterr().out  # the table of failed runs
    # the same bad input in every run is that input's own error, as before executors
    with pytest.raises(LabError, match="^--model-kwargs do not fit") as err:
        run_all(tmp_path / "lab2", runs[:1], budget(tiny_fashion, workers=1))
    assert not isinstance(err.value, RunsFailed)


def crash_once(budget, marker: str, what: str):
    """A job for the fault test: 'crash' kills its worker the first time, 'raise' raises, 'ok' returns."""
    if what == "crash" and not Path(marker).exists():
        Path(marker).touch()
        os._exit(1)
    if what == "raise":
        raise ValueError("boom")
    return what


def test_a_lost_worker_is_retried_once_and_errors_are_not(tmp_path):
    marker = str(tmp_path / "crashed")
    jobs = [("crash", (marker, "crash")), ("raise", (marker, "raise")), ("ok", (marker, "ok"))]
    out = execute(crash_once, jobs, Budget(workers=2, threads=1, progress=False), tmp_path / "lab")
    assert out[0] == "crash" and Path(marker).exists()  # lost once, then done in a new worker
    assert isinstance(out[1], Failure) and out[1].error == "ValueError: boom" and not out[1].user_error
    assert out[2] == "ok"
    assert not (tmp_path / "lab").exists()  # the probe of the folder left nothing behind


def test_a_stopped_run_stops_the_lab(tmp_path):
    started = []

    def job(budget, what):
        started.append(what)
        if what == "stop":  # as train_run does for a run stopped by SIGINT/SIGTERM
            raise StopLab("stopped by SIGINT")
        return what

    with pytest.raises(StopLab):
        execute(job, [("a", ("stop",)), ("b", ("ok",))], Budget(workers=1, progress=False), tmp_path / "lab")
    assert started == ["stop"]  # nothing more was started


def lab_cli(data, out, *flags):
    return main(["lab", "blocks", "--block-types", "plain", "--epochs", "1", "--max-train-samples", "32",
                 "--seeds", "1", "--data-dir", str(data), "--out", str(out), "--no-progress", *flags])


def test_an_out_the_workers_cannot_write_is_refused_in_one_line(tiny_fashion, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert lab_cli(tiny_fashion, tmp_path / "file" / "lab") == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write to the lab folder" in err and "--out" in err and len(err.splitlines()) == 1


def test_ray_missing_is_refused_in_one_line(tiny_fashion, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # import ray -> ImportError
    assert lab_cli(tiny_fashion, tmp_path / "lab", "--executor", "ray") == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'nondeep[ray]'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "lab").exists()


needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray not installed (nondeep[ray])")


@needs_ray
def test_an_unreachable_ray_address_is_refused_in_one_line(tiny_fashion, tmp_path, capsys):
    assert lab_cli(tiny_fashion, tmp_path / "lab", "--executor", "ray", "--ray-address", "127.0.0.1:1") == 2
    err = capsys.readouterr().err.strip()
    assert "cannot reach the Ray cluster at --ray-address 127.0.0.1:1" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "lab").exists()


def _descendants(pid: int) -> set[int]:
    """pid and every process below it (Linux /proc)."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, frontier = {pid}, {pid}
    while frontier:
        frontier = {child for child, ppid in parent.items() if ppid in frontier} - found
        found |= frontier
    return found


def listening_below(pid: int) -> set[tuple[str, str]]:
    """(address, port) of the TCP sockets listening in `pid` or its children (Linux /proc, hex as the kernel
    writes it): other tests' servers, in other pytest-xdist workers, are not ours."""
    inodes = set()
    for process in _descendants(pid):
        for fd in Path(f"/proc/{process}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        for line in path.read_text().splitlines()[1:] if path.exists() else []:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                found.add(tuple(fields[1].split(":")))
    return found


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


@pytest.fixture(scope="module")
def local_ray():
    """One Ray instance with 2 CPUs for this module, started as nondeep starts its own; yields the sockets it
    listens on."""
    executor.start_local_ray(num_cpus=2)
    import ray
    yield listening_below(os.getpid())
    ray.shutdown()


@needs_ray
def test_ray_gives_the_rows_of_the_local_executor_and_listens_on_loopback(local_ray, tiny_fashion, tmp_path,
                                                                          sequential):
    if Path("/proc/net/tcp").exists():
        assert local_ray and {address for address, _ in local_ray} <= LOOPBACK  # no port open to the network
    rows = run_all(tmp_path / "lab", RUNS, budget(tiny_fashion, executor="ray"))
    assert results(rows) == sequential
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ExecutorError, match="cannot write to the lab folder"):  # checked from a Ray worker
        run_all(tmp_path / "file" / "lab", RUNS, budget(tiny_fashion, executor="ray"))
