"""`make run` and `make worker` start one worker per GPU through studio/run_workers.py: which
GPUs, how each worker is pinned and named, checked by its dry run (no GPU here)."""

import shlex
import subprocess
import sys
import time

import pytest

from studio import run_workers
from tests.conftest import ROOT


@pytest.fixture
def dry_run(monkeypatch, capsys):
    """The lines `python -m studio.run_workers --dry-run ARGS` prints, one worker each, with
    the environment given; no nvidia-smi is found, as on a machine without a GPU."""

    def run(*args: str, **env: str) -> list[str]:
        monkeypatch.setenv("PATH", "/nonexistent")
        for name in ("STUDIO_GPUS", "STUDIO_QUEUE", "STUDIO_DEVICE", "CUDA_VISIBLE_DEVICES",
                     "CUDA_DEVICE_ORDER"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert run_workers.main(["--dry-run", *args]) == 0
        return capsys.readouterr().out.splitlines()

    return run


def test_studio_gpus_starts_one_worker_per_gpu_pinned_and_named_after_it(dry_run):
    lines = dry_run(STUDIO_GPUS="0,2")
    assert len(lines) == 2
    for line, gpu in zip(lines, ("0", "2"), strict=True):
        words = shlex.split(line)
        assert f"CUDA_VISIBLE_DEVICES={gpu}" in words and "STUDIO_DEVICE=cuda" in words
        assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in words
        assert f"--hostname=gpu{gpu}@%h" in words
        assert {"worker", "--concurrency=1", "--prefetch-multiplier=1",
                "--queues=generation"} <= set(words)


def test_without_a_gpu_one_cpu_worker_starts(dry_run):
    """No nvidia-smi: `all` (the default) finds no GPU."""
    [line] = dry_run()
    words = shlex.split(line)
    assert "--hostname=cpu@%h" in words
    assert not any(word.startswith("CUDA_VISIBLE_DEVICES") for word in words)


def test_cpu_keeps_the_worker_off_every_gpu_and_gpus_beats_the_environment(dry_run):
    [line] = dry_run("--gpus", "cpu", STUDIO_GPUS="0,1")
    assert {"CUDA_VISIBLE_DEVICES=", "STUDIO_DEVICE=cpu", "--hostname=cpu@%h"} <= set(
        shlex.split(line))


def test_the_environment_wins_over_what_a_worker_would_be_given_and_args_pass_through(
        dry_run):
    [line] = dry_run("--gpus", "1", "--", "--loglevel=DEBUG", STUDIO_DEVICE="cpu",
                     STUDIO_QUEUE="gpu-jobs")
    words = shlex.split(line)
    assert "STUDIO_DEVICE=cuda" not in words and "--queues=gpu-jobs" in words
    assert words[-1] == "--loglevel=DEBUG"


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


def test_all_means_every_gpu_nvidia_smi_lists():
    assert run_workers.chosen_gpus("all", listed=lambda: [0, 1, 3]) == [0, 1, 3]
    assert run_workers.chosen_gpus(None, listed=lambda: [0, 1]) == [0, 1]
    assert run_workers.chosen_gpus(" CPU ", listed=lambda: [0, 1]) == []


def test_make_worker_gpu_starts_that_gpus_worker():
    done = subprocess.run(["make", "-n", "worker", "GPU=1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    assert "studio.run_workers --gpus=1" in done.stdout


SUPERVISE = """
import sys
import time
from studio.run_workers import run
sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
quitter = [sys.executable, "-c", "import sys, time; time.sleep(1); sys.exit(3)"]
sys.exit(run([({}, sleeper), ({}, quitter)] if sys.argv[1] == "one-quits" else [({}, sleeper)]))
"""


def test_when_one_worker_exits_the_others_are_stopped_with_its_status():
    done = subprocess.run([sys.executable, "-c", SUPERVISE, "one-quits"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 3


def test_a_term_stops_every_worker():
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISE, "sleep"], cwd=ROOT)
    time.sleep(2)
    supervisor.terminate()
    assert supervisor.wait(timeout=30) == 0
