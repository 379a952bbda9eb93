"""Start Studio's job workers, one per GPU: `make run` and `make worker` call this.

    python -m studio.run_workers [--gpus all|cpu|0,1,...] [--dry-run] [-- CELERY_ARGS...]

Which GPUs: --gpus, else STUDIO_GPUS, else `all`, every GPU `nvidia-smi` lists. Each worker
runs with CUDA_VISIBLE_DEVICES=N, so it sees its own GPU alone, and is named `gpuN@<host>`,
the name its jobs record and the staff page lists. N is nvidia-smi's index: the workers get
CUDA_DEVICE_ORDER=PCI_BUS_ID, CUDA's numbering is otherwise fastest first, and
STUDIO_DEVICE=cuda, so a worker pinned to a GPU that is not there says so instead of running
on the CPU. With no GPU (no nvidia-smi, or it lists none), or `cpu`, one worker named
`cpu@<host>` runs on the CPU. Settings the environment gives win over these.

It stays in the foreground. Ctrl-C or TERM stops every worker, each finishing its job first
(Celery's warm shutdown); when one exits, the others are stopped too. `--dry-run` prints each
worker's environment and command, one line each, and starts nothing.

Reads the environment, not Django's settings: it only starts processes, which read those.
"""

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time


class GpuChoiceError(ValueError):
    """STUDIO_GPUS (or --gpus) is not `all`, `cpu` or a list of GPU indices."""


def visible_gpus() -> list[int]:
    """The GPUs nvidia-smi lists, by index; [] where there is no nvidia-smi or it fails."""
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(line) for line in listed.split() if line.strip().isdigit()]


def chosen_gpus(choice: str | None, listed=visible_gpus) -> list[int]:
    """The GPU indices to start a worker on ([]: one CPU worker), from `choice`: `all` (or
    nothing) for every GPU `listed()` gives, `cpu` for none, or indices such as `0,2`."""
    choice = (choice or "all").strip().lower()
    if choice == "all":
        return listed()
    if choice == "cpu":
        return []
    parts = [part.strip() for part in choice.split(",")]
    if not all(part.isdigit() for part in parts):
        raise GpuChoiceError(
            f"STUDIO_GPUS (--gpus) must be all, cpu or GPU indices such as 0,1; not {choice!r}")
    gpus = [int(part) for part in parts]
    if len(set(gpus)) != len(gpus):
        raise GpuChoiceError(f"STUDIO_GPUS (--gpus) names a GPU twice: {choice!r}")
    return gpus


def worker_plans(gpus: list[int], *, cpu_chosen: bool = False,
                 extra: tuple[str, ...] = ()) -> list[tuple[dict, list[str]]]:
    """(environment additions, command) for each worker to start. `cpu_chosen`: the CPU
    worker was asked for (`cpu`) rather than found no GPU, so it is kept off any GPU."""
    # The queue the workers take jobs from: studio/settings.py reads the same variable.
    queue = os.environ.get("STUDIO_QUEUE", "generation")
    plans = []
    for gpu in gpus or [None]:
        if gpu is None:
            name = "cpu"
            env = {"CUDA_VISIBLE_DEVICES": "", "STUDIO_DEVICE": "cpu"} if cpu_chosen else {}
        else:
            name = f"gpu{gpu}"
            env = {"CUDA_VISIBLE_DEVICES": str(gpu), "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                   "STUDIO_DEVICE": "cuda"}
        # One job at a time, none prefetched (docs/architecture.md §1): a diffusion job holds
        # the whole device, and a prefetched message would wait behind it, out of turn.
        command = [sys.executable, "-m", "celery", "-A", "studio", "worker", "--loglevel=INFO",
                   "--concurrency=1", "--prefetch-multiplier=1", f"--queues={queue}",
                   f"--hostname={name}@%h", *extra]
        # What the operator's environment sets wins.
        plans.append(({key: value for key, value in env.items() if key not in os.environ},
                      command))
    return plans


def describe(env: dict, command: list[str]) -> str:
    """The line a shell would run to start this worker."""
    assignments = [f"{key}={shlex.quote(value)}" for key, value in env.items()]
    return " ".join([*assignments, *map(shlex.quote, command)])


def run(plans: list[tuple[dict, list[str]]]) -> int:
    """Start the workers and wait; the exit status of the first to exit (0 when stopped)."""
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # Ctrl-C reaches the workers too: they are ours
    workers = [subprocess.Popen(command, env={**os.environ, **env}) for env, command in plans]
    status = 0
    while not stopping and all(worker.poll() is None for worker in workers):
        time.sleep(0.5)
    for worker in workers:
        if worker.poll() is not None and not stopping:
            status = worker.returncode or status
        elif worker.poll() is None:
            worker.terminate()  # Celery's warm shutdown: the running job ends first
    for worker in workers:
        worker.wait()
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.run_workers",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", default=os.environ.get("STUDIO_GPUS"),
                        help="all (default), cpu, or GPU indices such as 0,1 (STUDIO_GPUS)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print each worker's command and start nothing")
    parser.add_argument("celery_args", nargs="*", help="after --: more arguments for each worker")
    args = parser.parse_args(argv)
    try:
        gpus = chosen_gpus(args.gpus)
    except GpuChoiceError as exc:
        parser.error(str(exc))
    cpu_chosen = (args.gpus or "").strip().lower() == "cpu"
    plans = worker_plans(gpus, cpu_chosen=cpu_chosen, extra=tuple(args.celery_args))
    if args.dry_run:
        for env, command in plans:
            print(describe(env, command))
        return 0
    return run(plans)


if __name__ == "__main__":
    sys.exit(main())
