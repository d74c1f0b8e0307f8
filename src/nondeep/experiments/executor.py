"""Where a lab's runs train: the jobs of a lab (one per model and seed) mapped onto workers, results back in
the jobs' order.

- ``local`` (default): worker processes on this machine (concurrent.futures, spawn context): one per GPU when
  the lab runs on CUDA; on CPUs ``--workers`` (CPU_WORKERS by default, measured in docs/results/executor.md),
  each run with ``--threads`` or its share of the cores. One worker runs the jobs in this process, one after
  another, as a lab always did.
- ``ray``: each job a Ray task asking for its CPUs (the run's threads) and GPU (one on CUDA), sent to the
  cluster at ``--ray-address`` or to a Ray instance started for the lab on 127.0.0.1 with no dashboard (or to
  the one this process already joined). Ray is imported only here, only when asked for.

Every worker writes its run's folder under the lab's folder, which must be storage they all share: a probe
file is written there from a worker before anything is submitted. A job that raises is returned as a Failure
and the others go on; a job whose worker was lost (a killed process, a dead Ray node) is retried once.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import socket
import sys
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from tqdm import tqdm

from ..errors import NondeepError

if TYPE_CHECKING:
    from ._lab import Budget

EXECUTORS = ("local", "ray")
# runs at once on CPUs without --workers: on 2 idle cores a 4-run lab took 0.85x the time with 2 workers x 1
# thread but 0.55x with 1 worker x 2 threads (docs/results/executor.md): the cores do more inside one run
CPU_WORKERS = 1
RETRIES = 1              # extra attempts for a job whose worker was lost


class ExecutorError(NondeepError):
    """An executor that cannot run the lab: Ray missing or unreachable, a folder the workers cannot write."""


class StopLab(NondeepError):
    """Raised by a job to stop the whole lab, not just itself (a run stopped by SIGINT/SIGTERM)."""


@dataclass
class Failure:
    """A job that raised: its name, the error's one-line message, whether it was bad input (a NondeepError)
    and how many times it was tried."""
    name: str
    error: str
    user_error: bool = False
    attempts: int = 1


@dataclass(frozen=True)
class Plan:
    """How the jobs are spread: the executor, how many run at once (local), each worker's device and the
    torch threads of each run (None: torch's choice)."""
    executor: str
    workers: int | None
    devices: tuple[str, ...]
    threads: int | None
    address: str | None = None

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def text(self) -> str:
        threads = f"{self.threads} thread(s) each" if self.threads else "torch's threads"
        if self.executor == "ray":
            where = self.address or "a local Ray instance on 127.0.0.1"
            return f"ray at {where}, each run a task with {self.threads} CPU(s) and {len(self.devices)} GPU(s)"
        workers = f"{self.workers} worker" + ("s" if self.workers != 1 else "")
        return f"local, {workers} on {', '.join(sorted(set(self.devices)))} ({threads})"


def plan_for(budget: "Budget") -> Plan:
    """The plan a budget asks for (--executor, --workers, --threads, --device, --ray-address)."""
    if budget.executor not in EXECUTORS:
        raise ExecutorError(f"--executor must be one of {', '.join(EXECUTORS)}, got {budget.executor!r}")
    if budget.workers is not None and budget.workers < 1:
        raise ExecutorError(f"--workers must be at least 1, got {budget.workers}")
    gpu = budget.device.startswith("cuda") or (budget.device == "auto" and torch.cuda.is_available())
    if budget.executor == "ray":
        return Plan("ray", None, ("cuda",) if gpu else (), budget.threads or 1, budget.ray_address)
    if gpu:
        ids = ([budget.device] if ":" in budget.device else
               [f"cuda:{i}" for i in range(max(1, torch.cuda.device_count()))])
        workers = budget.workers or len(ids)
        return Plan("local", workers, tuple(ids[i % len(ids)] for i in range(workers)), _threads(budget, workers))
    workers = budget.workers or CPU_WORKERS
    return Plan("local", workers, ("cpu",) * workers, _threads(budget, workers))


def _threads(budget: "Budget", workers: int) -> int | None:
    """--threads, or each concurrent run's share of the cores (one run alone: torch's choice)."""
    return budget.threads or (max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None)


# a job: (name, args); the task is called as task(budget, *args) with the worker's budget
Job = tuple[str, tuple]


def execute(task: Callable[..., Any], jobs: Sequence[Job], budget: "Budget", folder: Path) -> list[Any]:
    """Run task(worker_budget, *args) for every job; return its results (or Failures) in the jobs' order.
    The worker's budget is `budget` with the worker's device and threads (progress bars off in workers)."""
    plan = plan_for(budget)
    if not jobs:
        return []
    bar = tqdm(total=len(jobs), desc=f"lab runs ({plan.text()})", disable=not budget.progress, dynamic_ncols=True)
    results: list[Any] = [None] * len(jobs)
    finished = [0]  # the bar counts nothing when it is disabled

    def done(index: int, result: Any) -> None:
        results[index] = result
        finished[0] += 1
        bar.update(1)
        tqdm.write(f"[{finished[0]}/{len(jobs)}] {jobs[index][0]}: {_outcome(result)}")

    try:
        if plan.executor == "ray":
            _run_on_ray(plan, task, jobs, budget, folder, done)
        elif plan.workers == 1:
            _run_here(plan, task, jobs, budget, folder, done)
        else:
            _run_in_processes(plan, task, jobs, budget, folder, done)
    finally:
        bar.close()
    return results


def _outcome(result: Any) -> str:
    if isinstance(result, Failure):
        return f"FAILED after {result.attempts} attempt(s): {result.error}"
    if isinstance(result, dict) and "test_accuracy" in result:
        return f"test accuracy {result['test_accuracy']:.2f}% ({result.get('train_seconds', 0):.0f} s on {result.get('device')})"
    return "done"


def _worker_budget(budget: "Budget", plan: Plan, device: str | None, progress: bool) -> "Budget":
    return dataclasses.replace(budget, device=device or budget.device, threads=plan.threads, progress=progress)


def _failure(name: str, err: BaseException, attempts: int = 1) -> Failure:
    lines = str(err).strip().splitlines() or [type(err).__name__]
    message = lines[0] if isinstance(err, NondeepError) else f"{type(err).__name__}: {lines[0]}"
    return Failure(name, message, isinstance(err, NondeepError), attempts)


def probe_folder(folder: Path) -> str:
    """Create and remove a file in `folder` (and the folders made for it): what a worker must be able to do
    there. Returns the host it ran on; raises ExecutorError with what to do."""
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".nondeep-probe-{uuid.uuid4().hex}"
        probe.write_text("probe")
        probe.unlink()
    except OSError as err:
        raise ExecutorError(f"a worker on {socket.gethostname()} cannot write to the lab folder {folder} "
                            f"({err.strerror or err}): give an --out on storage every worker can write") from err
    finally:
        for path in made:  # deepest first: leave no trace of the probe
            try:
                path.rmdir()
            except OSError:
                pass
    return socket.gethostname()


def _run_here(plan: Plan, task: Callable[..., Any], jobs: Sequence[Job], budget: "Budget", folder: Path,
              done: Callable[[int, Any], None]) -> None:
    """One worker: the jobs one after another in this process (the per-epoch bars stay on)."""
    probe_folder(folder)
    worker_budget = _worker_budget(budget, plan, plan.devices[0], budget.progress)
    for index, (name, args) in enumerate(jobs):
        try:
            done(index, task(worker_budget, *args))
        except StopLab:
            raise
        except Exception as err:  # noqa: BLE001 - a failed run is reported, the others go on
            done(index, _failure(name, err))


_worker_device: str | None = None  # set in each worker process by _take_device


def _take_device(devices: "multiprocessing.queues.Queue[str]") -> None:
    global _worker_device
    _worker_device = devices.get()


def _call_with_device(task: Callable[..., Any], budget: "Budget", plan: Plan, args: tuple) -> Any:
    return task(_worker_budget(budget, plan, _worker_device, False), *args)


def _run_in_processes(plan: Plan, task: Callable[..., Any], jobs: Sequence[Job], budget: "Budget", folder: Path,
                      done: Callable[[int, Any], None]) -> None:
    """Worker processes, each pinned to its device; a pool broken by a lost worker is started again for the
    jobs it lost, RETRIES times."""
    context = multiprocessing.get_context("spawn")
    attempts = [0] * len(jobs)
    pending = list(range(len(jobs)))
    first = True
    while pending:
        devices = context.Queue()
        for device in plan.devices:
            devices.put(device)
        lost: list[int] = []
        with ProcessPoolExecutor(plan.workers, mp_context=context, initializer=_take_device,
                                 initargs=(devices,)) as pool:
            if first:  # the workers must reach the lab folder before any run starts
                try:
                    pool.submit(probe_folder, folder).result()
                except BrokenProcessPool as err:
                    raise ExecutorError(f"the local workers could not start ({err}); a script that starts a lab "
                                        "needs `if __name__ == '__main__':`, or use --workers 1") from err
                first = False
            futures: dict[Future, int] = {}
            for index in pending:
                attempts[index] += 1
                futures[pool.submit(_call_with_device, task, budget, plan, jobs[index][1])] = index
            try:
                while futures:
                    finished, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for future in finished:
                        index = futures.pop(future)
                        try:
                            done(index, future.result())
                        except BrokenProcessPool as err:
                            if attempts[index] <= RETRIES:
                                tqdm.write(f"{jobs[index][0]}: its worker was lost ({err}); retrying")
                                lost.append(index)
                            else:
                                done(index, _failure(jobs[index][0], err, attempts[index]))
                        except StopLab:
                            raise
                        except Exception as err:  # noqa: BLE001
                            done(index, _failure(jobs[index][0], err, attempts[index]))
            except BaseException:  # Ctrl-C, a stopped run: start nothing more (running runs checkpoint and stop)
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        pending = sorted(lost)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ExecutorError("--executor ray needs Ray: pip install 'nondeep[ray]' (or use --executor local)") from err
    return ray


def start_local_ray(num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Start a Ray instance for this process that listens on 127.0.0.1 only, with no dashboard. On Linux Ray
    takes the node's outward address, even when given 127.0.0.1, unless the setting it keeps for single-node
    macOS/Windows is off; it is read when Ray is imported, so this sets it first (and the Ray processes inherit
    it)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray = _import_ray()
    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=num_cpus,
             num_gpus=num_gpus)


def _check_reachable(address: str) -> None:
    """Fail fast, in one line, on an address nothing listens at (ray.init would wait a minute)."""
    if address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        socket.create_connection((host or address, int(port or 6379)), timeout=5).close()
    except (OSError, ValueError) as err:
        raise ExecutorError(f"cannot reach the Ray cluster at --ray-address {address} ({err}): start it with "
                            "`ray start --head` there, open an SSH tunnel to it, or leave out --ray-address to "
                            "run on a local Ray instance") from err


def _run_on_ray(plan: Plan, task: Callable[..., Any], jobs: Sequence[Job], budget: "Budget", folder: Path,
                done: Callable[[int, Any], None]) -> None:
    started_here = not (sys.modules.get("ray") is not None and sys.modules["ray"].is_initialized())  # else: joined
    if started_here and plan.address:
        ray = _import_ray()
        _check_reachable(plan.address)
        try:
            ray.init(address=plan.address)
        except (ConnectionError, RuntimeError) as err:
            raise ExecutorError(f"cannot join the Ray cluster at --ray-address {plan.address} "
                                f"({str(err).strip().splitlines()[0]}): is it a Ray head node of this Ray version?"
                                ) from err
    elif started_here:
        start_local_ray()
    ray = _import_ray()
    from ray.exceptions import NodeDiedError, RayTaskError, WorkerCrashedError

    try:
        try:
            ray.get(ray.remote(num_cpus=0)(probe_folder).remote(folder))
        except RayTaskError as err:
            raise err.cause if isinstance(err.cause, ExecutorError) else ExecutorError(str(err)) from err
        gpus = 1 if plan.devices else 0
        remote = ray.remote(num_cpus=plan.threads, num_gpus=gpus, max_retries=RETRIES)(_call_on_ray)
        worker_budget = _worker_budget(budget, plan, "cuda" if gpus else "cpu", False)
        refs = {remote.remote(task, worker_budget, args): index for index, (_, args) in enumerate(jobs)}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            index = refs.pop(ready[0])
            try:
                done(index, ray.get(ready[0]))
            except RayTaskError as err:
                if isinstance(err.cause, StopLab):
                    raise err.cause from None
                done(index, _failure(jobs[index][0], err.cause or err))
            except (WorkerCrashedError, NodeDiedError) as err:  # Ray already retried it RETRIES times
                done(index, _failure(jobs[index][0], err, 1 + RETRIES))
    finally:
        if started_here:
            ray.shutdown()


def _call_on_ray(task: Callable[..., Any], budget: "Budget", args: tuple) -> Any:
    return task(budget, *args)

