"""Start Studio's job workers, one per GPU: `make run` and `make worker` call this.

    python -m studio.run_workers [--gpus all|cpu|0,1,...] [--dry-run] [-- CELERY_ARGS...]

Which GPUs: --gpus, else STUDIO_GPUS, else `all`, every GPU `nvidia-smi` lists. Each worker
runs with CUDA_VISIBLE_DEVICES=N, so it sees its own GPU alone, and is named `gpuN@<host>`,
the name its jobs record and the staff page lists. N is nvidia-smi's index: the workers get
CUDA_DEVICE_ORDER=PCI_BUS_ID, CUDA's numbering is otherwise fastest first, and
STUDIO_DEVICE=cuda, so a worker pinned to a GPU that is not there says so instead of running
on the CPU. With no GPU (no nvidia-smi, or it lists none), or `cpu`, one worker named
`cpu@<host>` runs on the CPU; `cpu` also keeps it off every GPU (CUDA_VISIBLE_DEVICES='',
STUDIO_DEVICE=cpu).

A CUDA_VISIBLE_DEVICES the environment sets limits the choice, and each worker's own pin
replaces it: with `all`, one worker per entry (an nvidia-smi index, or a UUID such as
GPU-8f2c...), named gpuN with N the index, or the entry's position for a UUID; an empty one
means no GPU, one cpu worker. Explicit GPUs must be among its entries, or are refused.
CUDA_DEVICE_ORDER and STUDIO_DEVICE from the environment win over what a worker is given.

torch must be a CUDA build to use a GPU; `make run` installs the CPU one. With GPUs found
(`all`) but a CPU build, one cpu worker runs, with a warning saying how to install a CUDA
build; GPUs chosen explicitly are refused (exit status 2). A child process asks torch, so
this one never initialises CUDA.

It stays in the foreground. Ctrl-C or TERM stops every worker, each finishing its job first
(Celery's warm shutdown). A worker that exits with status 0 (shut down cleanly: drained and
stopped, docs/operations.md §2.4) leaves the others running, and this exits with 0 once all
have; one that crashes stops the others, and this exits with its status. `--dry-run` prints
each worker's environment and command, one line each, and starts nothing.

Reads the environment, not Django's settings: it only starts processes, which read those.
"""

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

# How to install a CUDA build of torch, where the warning and the refusal point.
CUDA_TORCH_DOCS = "docs/operations.md §2.1"


class GpuChoiceError(ValueError):
    """STUDIO_GPUS (or --gpus) is not `all`, `cpu` or GPU indices, or chooses GPUs this host's
    environment or its torch cannot use."""


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


def inherited_gpus() -> list[str] | None:
    """The entries of the CUDA_VISIBLE_DEVICES the environment sets (None where it sets none),
    up to the first empty or negative one: CUDA ignores the rest, so `-1` means no GPU."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    entries = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry or entry.startswith("-"):
            break
        entries.append(entry)
    if len(set(entries)) != len(entries):
        raise GpuChoiceError(f"CUDA_VISIBLE_DEVICES names a GPU twice: {value!r}")
    return entries


def chosen_gpus(choice: str | None, listed=visible_gpus) -> list[str]:
    """What to pin each worker to, one entry per worker ([]: one CPU worker), from `choice`:
    `all` (or nothing) for every GPU `listed()` gives, or the inherited CUDA_VISIBLE_DEVICES'
    entries; `cpu` for none; or indices such as `0,2`, which must be among those entries."""
    choice = (choice or "all").strip().lower()
    if choice == "cpu":
        return []
    inherited = inherited_gpus()
    if choice == "all":
        found = [] if inherited == [] else listed()
        if not found:
            return []
        return inherited if inherited is not None else [str(gpu) for gpu in found]
    parts = [part.strip() for part in choice.split(",")]
    if not all(part.isdigit() for part in parts):
        raise GpuChoiceError(
            f"STUDIO_GPUS (--gpus) must be all, cpu or GPU indices such as 0,1; not {choice!r}")
    gpus = [str(int(part)) for part in parts]
    if len(set(gpus)) != len(gpus):
        raise GpuChoiceError(f"STUDIO_GPUS (--gpus) names a GPU twice: {choice!r}")
    outside = [gpu for gpu in gpus if inherited is not None and gpu not in inherited]
    if outside:
        raise GpuChoiceError(
            f"STUDIO_GPUS (--gpus) chooses GPU {','.join(outside)}, which the environment's "
            f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} hides: choose among "
            f"its entries, or unset it")
    return gpus


def torch_build() -> tuple[str, str]:
    """(torch's version, its CUDA version or '' for a CPU build), asked of a child process of
    this interpreter, the one the workers run, so this process neither imports torch nor
    initialises CUDA."""
    ask = "import torch; print(torch.__version__, torch.version.cuda or '')"
    try:
        done = subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True,
                              timeout=120, check=True)
    except subprocess.CalledProcessError as exc:
        raise GpuChoiceError(f"cannot import torch with {sys.executable}: "
                             f"{(exc.stderr.strip().splitlines() or [exc])[-1]}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GpuChoiceError(f"cannot import torch with {sys.executable}: {exc}") from exc
    # The last line: importing torch may print warnings of its own.
    version, _, cuda = (done.stdout.strip().splitlines() or [""])[-1].partition(" ")
    return version, cuda.strip()


def usable_gpus(gpus: list[str], *, explicit: bool) -> list[str]:
    """`gpus`, or [] (one CPU worker, with a warning) where torch is a CPU build; GPUs chosen
    `explicit`ly are refused then, rather than given workers that fail every job."""
    if not gpus:
        return gpus
    version, cuda = torch_build()
    if cuda:
        return gpus
    install = (f"{sys.executable} -m pip install torch=={version.split('+')[0]} --index-url "
               f"https://download.pytorch.org/whl/cu128 (the CUDA version your driver takes; "
               f"{CUDA_TORCH_DOCS})")
    if explicit:
        raise GpuChoiceError(
            f"STUDIO_GPUS (--gpus) chooses GPU {','.join(gpus)}, but torch {version} is a CPU "
            f"build: a worker on a GPU would fail every job. Choose cpu, or install a CUDA "
            f"build: {install}")
    source = ("CUDA_VISIBLE_DEVICES names" if "CUDA_VISIBLE_DEVICES" in os.environ
              else "nvidia-smi lists")
    print(f"run_workers: warning: {source} {len(gpus)} GPU(s), but torch {version} is a CPU "
          f"build: starting one worker cpu@{socket.gethostname()} on the CPU instead. To use "
          f"the GPUs, install a CUDA build: {install}", file=sys.stderr)
    return []


def worker_names(gpus: list[str]) -> list[str]:
    """gpuN for each pin: N the index, or the position of a UUID (all positions where
    indices and UUIDs mixed would name two workers alike)."""
    names = [f"gpu{gpu if gpu.isdigit() else position}" for position, gpu in enumerate(gpus)]
    if len(set(names)) != len(names):
        names = [f"gpu{position}" for position in range(len(gpus))]
    return names


def worker_plans(gpus: list[str], *, cpu_chosen: bool = False,
                 extra: tuple[str, ...] = ()) -> list[tuple[dict, list[str]]]:
    """(environment additions, command) for each worker to start. `cpu_chosen`: the CPU
    worker was asked for (`cpu`) rather than found no GPU, so it is kept off any GPU."""
    # The queue the workers take jobs from: studio/settings.py reads the same variable.
    queue = os.environ.get("STUDIO_QUEUE", "generation")
    workers = list(zip(gpus, worker_names(gpus), strict=True)) or [(None, "cpu")]
    plans = []
    for gpu, name in workers:
        if gpu is None:
            pin = {"CUDA_VISIBLE_DEVICES": ""} if cpu_chosen else {}
            defaults = {"STUDIO_DEVICE": "cpu"} if cpu_chosen else {}
        else:
            pin = {"CUDA_VISIBLE_DEVICES": gpu}
            defaults = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "STUDIO_DEVICE": "cuda"}
        # One job at a time, none prefetched (docs/architecture.md §1): a diffusion job holds
        # the whole device, and a prefetched message would wait behind it, out of turn.
        command = [sys.executable, "-m", "celery", "-A", "studio", "worker", "--loglevel=INFO",
                   "--concurrency=1", "--prefetch-multiplier=1", f"--queues={queue}",
                   f"--hostname={name}@%h", *extra]
        # The pin replaces an inherited CUDA_VISIBLE_DEVICES, or every worker would share its
        # GPUs; for the rest, what the operator's environment sets wins.
        env = {key: value for key, value in defaults.items() if key not in os.environ}
        plans.append(({**pin, **env}, command))
    return plans


def describe(env: dict, command: list[str]) -> str:
    """The line a shell would run to start this worker."""
    assignments = [f"{key}={shlex.quote(value)}" for key, value in env.items()]
    return " ".join([*assignments, *map(shlex.quote, command)])


def run(plans: list[tuple[dict, list[str]]]) -> int:
    """Start the workers and wait until every one has exited.

    1. One that exits with 0 (shut down cleanly, say drained and stopped on its own) leaves
       the others running.
    2. One that exits otherwise (a crash) stops the others, each finishing its job first;
       its status is returned, 128 + N for signal N, so `make run`'s `wait -n` sees it.
    3. TERM or Ctrl-C stops them all, and 0 is returned.
    """
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # Ctrl-C reaches the workers too: they are ours
    workers = [subprocess.Popen(command, env={**os.environ, **env}) for env, command in plans]
    crashed = None
    while not stopping:
        crashed = next((worker for worker in workers if worker.poll()), None)
        if crashed is not None or all(worker.returncode is not None for worker in workers):
            break
        time.sleep(0.5)
    status = 0
    if crashed is not None:
        status = crashed.returncode if crashed.returncode > 0 else 128 - crashed.returncode
        name = next((arg.removeprefix("--hostname=").replace("%h", socket.gethostname())
                     for arg in crashed.args if arg.startswith("--hostname=")),
                    f"pid {crashed.pid}")
        print(f"run_workers: worker {name} exited with status {crashed.returncode}; "
              f"stopping the others", file=sys.stderr)
    for worker in workers:
        if worker.poll() is None:
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
    choice = (args.gpus or "all").strip().lower()
    try:
        gpus = usable_gpus(chosen_gpus(choice), explicit=choice not in ("all", "cpu"))
    except GpuChoiceError as exc:
        parser.error(str(exc))
    plans = worker_plans(gpus, cpu_chosen=choice == "cpu", extra=tuple(args.celery_args))
    if args.dry_run:
        for env, command in plans:
            print(describe(env, command))
        return 0
    return run(plans)


if __name__ == "__main__":
    sys.exit(main())
