"""`make run` and `make worker` start one worker per GPU through studio/run_workers.py: which
GPUs, how each worker is pinned and named, checked by its dry run (no GPU here: a fake
nvidia-smi lists GPUs, and the torch build is told), and how the workers are supervised."""

import shlex
import subprocess
import sys
import time

import pytest
import torch

from studio import run_workers
from tests.conftest import ROOT

SETTINGS = ("STUDIO_GPUS", "STUDIO_QUEUE", "STUDIO_DEVICE", "CUDA_VISIBLE_DEVICES",
            "CUDA_DEVICE_ORDER")


def fake_nvidia_smi(folder, listed: list[int]):
    """A folder for PATH with an nvidia-smi that lists these GPU indices, as the real one
    does for `--query-gpu=index --format=csv,noheader`."""
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\nprintf '%s\\n' " + " ".join(map(str, listed)) + "\n")
    script.chmod(0o755)
    return folder


@pytest.fixture
def main(monkeypatch, capsys, tmp_path):
    """`python -m studio.run_workers --dry-run ARGS` in this process, with the environment
    given: (exit status, stdout's lines, stderr). `listed`: the GPUs a fake nvidia-smi lists
    (None: there is none, as on a machine without a GPU); `cuda`: the CUDA version torch is
    built for, '' for the CPU build."""

    def run(*args: str, listed: list[int] | None = None, cuda: str = "12.8", **env: str):
        folder = tmp_path / "bin"
        folder.mkdir(exist_ok=True)
        if listed is not None:
            fake_nvidia_smi(folder, listed)
        monkeypatch.setenv("PATH", str(folder))
        for name in SETTINGS:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(run_workers, "torch_build",
                            lambda: (f"2.13.0+{'cu128' if cuda else 'cpu'}", cuda))
        try:
            status = run_workers.main(["--dry-run", *args])
        except SystemExit as refused:
            status = refused.code
        out, err = capsys.readouterr()
        return status, out.splitlines(), err

    return run


@pytest.fixture
def dry_run(main):
    """The lines the dry run prints, one worker each, split into words; it must succeed."""

    def run(*args: str, **kwargs) -> list[list[str]]:
        status, lines, err = main(*args, **kwargs)
        assert status == 0, err
        return [shlex.split(line) for line in lines]

    return run


def test_studio_gpus_starts_one_worker_per_gpu_pinned_and_named_after_it(dry_run):
    workers = dry_run(STUDIO_GPUS="0,2")
    assert len(workers) == 2
    for words, gpu in zip(workers, ("0", "2"), strict=True):
        assert f"CUDA_VISIBLE_DEVICES={gpu}" in words and "STUDIO_DEVICE=cuda" in words
        assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in words
        assert f"--hostname=gpu{gpu}@%h" in words
        assert {"worker", "--concurrency=1", "--prefetch-multiplier=1",
                "--queues=generation"} <= set(words)


def test_all_starts_a_worker_for_every_gpu_nvidia_smi_lists(dry_run):
    workers = dry_run(listed=[0, 1, 3])
    assert [words[0] for words in workers] == [f"CUDA_VISIBLE_DEVICES={gpu}" for gpu in "013"]
    assert [words[-1] for words in workers] == [f"--hostname=gpu{gpu}@%h" for gpu in "013"]


def test_without_a_gpu_one_cpu_worker_starts(dry_run):
    """No nvidia-smi: `all` (the default) finds no GPU."""
    [words] = dry_run()
    assert "--hostname=cpu@%h" in words
    assert not any(word.startswith(("CUDA_VISIBLE_DEVICES", "STUDIO_DEVICE")) for word in words)


def test_cpu_keeps_the_worker_off_every_gpu_and_gpus_beats_the_environment(dry_run):
    [words] = dry_run("--gpus", "cpu", STUDIO_GPUS="0,1", CUDA_VISIBLE_DEVICES="0,1")
    assert {"CUDA_VISIBLE_DEVICES=", "STUDIO_DEVICE=cpu", "--hostname=cpu@%h"} <= set(words)


def test_the_environment_wins_over_what_a_worker_would_be_given_and_args_pass_through(
        dry_run):
    [words] = dry_run("--gpus", "1", "--", "--loglevel=DEBUG", STUDIO_DEVICE="cpu",
                      CUDA_DEVICE_ORDER="FASTEST_FIRST", STUDIO_QUEUE="gpu-jobs")
    assert "STUDIO_DEVICE=cuda" not in words and "--queues=gpu-jobs" in words
    assert not any(word.startswith("CUDA_DEVICE_ORDER") for word in words)
    assert words[-1] == "--loglevel=DEBUG"


# A CPU build of torch (what `make run` installs) on a machine with GPUs.

def test_gpus_found_with_a_cpu_torch_start_one_cpu_worker_and_say_how_to_use_them(main):
    status, [line], err = main(listed=[0, 1], cuda="")
    words = shlex.split(line)
    assert status == 0 and "--hostname=cpu@%h" in words
    assert not any(word.startswith(("STUDIO_DEVICE", "CUDA_VISIBLE_DEVICES")) for word in words)
    assert "nvidia-smi lists 2 GPU" in err and "CPU build" in err
    assert "download.pytorch.org/whl/cu" in err and "docs/operations.md §2.1" in err


def test_gpus_chosen_with_a_cpu_torch_are_refused(main):
    status, lines, err = main("--gpus", "0,1", listed=[0, 1], cuda="")
    assert status == 2 and not lines
    assert "STUDIO_GPUS" in err and "CPU build" in err and "§2.1" in err


@pytest.mark.skipif(bool(torch.version.cuda), reason="needs the CPU build of torch")
def test_the_torch_build_is_asked_of_the_venvs_torch(tmp_path):
    """The real check, in a child process: this venv's torch is the CPU build."""
    folder = fake_nvidia_smi(tmp_path / "bin", [0, 1])
    done = subprocess.run([sys.executable, "-m", "studio.run_workers", "--dry-run"], cwd=ROOT,
                          env={"PATH": str(folder)}, capture_output=True, text=True, timeout=120)
    [line] = done.stdout.splitlines()
    assert done.returncode == 0 and "--hostname=cpu@%h" in shlex.split(line)
    assert f"torch {torch.__version__} is a CPU build" in done.stderr
    refused = subprocess.run(
        [sys.executable, "-m", "studio.run_workers", "--dry-run", "--gpus=1"], cwd=ROOT,
        env={"PATH": str(folder)}, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "CPU build" in refused.stderr and not refused.stdout


# A CUDA_VISIBLE_DEVICES the shell sets.

def test_an_inherited_cuda_visible_devices_chooses_the_gpus_each_pinned_to_one(dry_run):
    workers = dry_run(listed=[0, 1, 2, 3], CUDA_VISIBLE_DEVICES="2,3")
    assert [words[0] for words in workers] == ["CUDA_VISIBLE_DEVICES=2", "CUDA_VISIBLE_DEVICES=3"]
    assert [words[-1] for words in workers] == ["--hostname=gpu2@%h", "--hostname=gpu3@%h"]


def test_gpus_given_by_uuid_are_named_by_their_position(dry_run):
    workers = dry_run(listed=[0, 1], CUDA_VISIBLE_DEVICES="GPU-8f2c01aa,GPU-11ab9e3d")
    assert [(words[0], words[-1]) for words in workers] == [
        ("CUDA_VISIBLE_DEVICES=GPU-8f2c01aa", "--hostname=gpu0@%h"),
        ("CUDA_VISIBLE_DEVICES=GPU-11ab9e3d", "--hostname=gpu1@%h"),
    ]
    mixed = dry_run(listed=[0, 1], CUDA_VISIBLE_DEVICES="GPU-8f2c01aa,0")
    assert [words[-1] for words in mixed] == ["--hostname=gpu0@%h", "--hostname=gpu1@%h"]


@pytest.mark.parametrize("hidden", ["", "-1", "-1,0"])
def test_an_inherited_cuda_visible_devices_that_hides_every_gpu_means_the_cpu(dry_run, hidden):
    [words] = dry_run(listed=[0, 1], CUDA_VISIBLE_DEVICES=hidden)
    assert "--hostname=cpu@%h" in words and not any("=cuda" in word for word in words)


def test_a_workers_own_gpu_replaces_the_inherited_cuda_visible_devices(dry_run):
    [words] = dry_run("--gpus", "3", CUDA_VISIBLE_DEVICES="2,3")
    assert words[0] == "CUDA_VISIBLE_DEVICES=3" and "--hostname=gpu3@%h" in words


@pytest.mark.parametrize("inherited", ["2,3", "", "GPU-8f2c01aa"])
def test_gpus_chosen_outside_the_inherited_cuda_visible_devices_are_refused(main, inherited):
    status, lines, err = main("--gpus", "0,3", listed=[0, 1, 2, 3],
                              CUDA_VISIBLE_DEVICES=inherited)
    assert status == 2 and not lines
    assert "STUDIO_GPUS" in err and f"CUDA_VISIBLE_DEVICES='{inherited}'" in err


@pytest.mark.parametrize("choice", ["0,x", "gpu0", "-1", "1,1"])
def test_a_bad_choice_is_refused_naming_the_setting(choice):
    with pytest.raises(run_workers.GpuChoiceError, match="STUDIO_GPUS"):
        run_workers.chosen_gpus(choice)


def test_the_command_line_refuses_a_bad_choice_with_its_usage():
    done = subprocess.run(
        [sys.executable, "-m", "studio.run_workers", "--dry-run"], cwd=ROOT,
        env={"PATH": "/nonexistent", "STUDIO_GPUS": "gpu0"}, capture_output=True, text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "STUDIO_GPUS" in done.stderr and not done.stdout


def test_all_means_every_gpu_nvidia_smi_lists_within_the_inherited_ones(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert run_workers.chosen_gpus("all", listed=lambda: [0, 1, 3]) == ["0", "1", "3"]
    assert run_workers.chosen_gpus(None, listed=lambda: [0, 1]) == ["0", "1"]
    assert run_workers.chosen_gpus(" CPU ", listed=lambda: [0, 1]) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1, 3")
    assert run_workers.chosen_gpus("all", listed=lambda: [0, 1, 3]) == ["1", "3"]
    assert run_workers.chosen_gpus("all", listed=lambda: []) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,1")
    with pytest.raises(run_workers.GpuChoiceError, match="CUDA_VISIBLE_DEVICES"):
        run_workers.chosen_gpus("all", listed=lambda: [0, 1])


def test_make_worker_gpu_starts_that_gpus_worker():
    done = subprocess.run(["make", "-n", "worker", "GPU=1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    assert "studio.run_workers --gpus=1" in done.stdout


# Supervising the workers: stand-ins for Celery that sleep, exit or die.
SUPERVISE = """
import sys
from studio.run_workers import run
def worker(code):
    return ({}, [sys.executable, "-c", "import os, sys, time\\n" + code])
sleeper = worker("time.sleep(60)")
mode = sys.argv[1]
if mode == "crash":
    plans = [sleeper, worker("time.sleep(1); sys.exit(3)")]
elif mode == "killed":
    plans = [sleeper, worker("time.sleep(1); os.kill(os.getpid(), 9)")]
elif mode == "one-shuts-down":
    finisher = worker(f"time.sleep(3); open({sys.argv[2]!r}, 'w').close()")
    plans = [finisher, worker("time.sleep(1)")]
else:
    plans = [sleeper]
sys.exit(run(plans))
"""


@pytest.mark.parametrize(("mode", "status", "said"), [("crash", 3, 3), ("killed", 128 + 9, -9)])
def test_a_worker_that_crashes_stops_the_others_with_its_status(mode, status, said):
    """The other worker sleeps a minute: stopped, not waited for, within the timeout."""
    done = subprocess.run([sys.executable, "-c", SUPERVISE, mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == status and f"exited with status {said};" in done.stderr


def test_a_worker_shut_down_cleanly_leaves_the_others_running(tmp_path):
    """Draining one GPU's worker (docs/operations.md §2.4) ends with it exiting 0."""
    finished = tmp_path / "finished"
    done = subprocess.run([sys.executable, "-c", SUPERVISE, "one-shuts-down", str(finished)],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert finished.exists()  # the other worker ran to its end instead of being stopped


def test_a_term_stops_every_worker():
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISE, "sleep"], cwd=ROOT)
    time.sleep(2)
    supervisor.terminate()
    assert supervisor.wait(timeout=30) == 0
