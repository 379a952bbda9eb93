import json
import sys
import threading

from studio.celery import app
from studio.tasks import ping
from tests.conftest import Worker

# Celery's command line, run with torch's CUDA questions recorded: which process asked, and
# whether the question starts CUDA and so poisons fork (torch's multiprocessing notes).
CUDA_PROBE = """
import json, os, sys
import torch

def recorded(module, name, poisons):
    original = getattr(module, name)
    def call(*args, **kwargs):
        with open(os.environ["CUDA_PROBE_LOG"], "a") as log:
            asked = {"pid": os.getpid(), "call": f"{module.__name__}.{name}", "poisons": poisons()}
            log.write(json.dumps(asked) + "\\n")
        return original(*args, **kwargs)
    setattr(module, name, call)

without_nvml = lambda: os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") != "1"
recorded(torch.cuda, "is_available", without_nvml)
recorded(torch.accelerator, "is_available", without_nvml)
for name in ("init", "_lazy_init", "current_device", "get_device_capability",
             "get_device_properties", "get_device_name", "is_bf16_supported", "set_device"):
    recorded(torch.cuda, name, lambda: True)

from celery.__main__ import main
sys.argv[0] = "celery"
main()
"""


def test_a_real_worker_round_trip_through_redis(celery_worker):
    result = ping.delay("hello")
    assert result.get(timeout=60) == "pong:hello"


def test_celery_has_the_reliability_settings():
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit


def test_the_result_backend_is_made_once_not_per_thread():
    """Under ASGI each request's sync code runs in a thread of its own: a backend made per
    thread was built again by every submit, to make the result apply_async returns."""
    made = []
    thread = threading.Thread(target=lambda: made.append(app.backend))
    thread.start()
    thread.join()
    assert made[0] is app.backend


def test_the_worker_leaves_cuda_alone_until_it_has_forked(transactional_db, tmp_path, monkeypatch):
    """A GPU worker's main process imports the engine, then forks the process that runs jobs.
    Had the main process started CUDA, every job would fail there with "Cannot re-initialize
    CUDA in forked subprocess" (seen on an H100). torch here is the CPU build, so the test
    records the questions that would start CUDA rather than their effect."""
    probe, log = tmp_path / "cuda_probe.py", tmp_path / "cuda.jsonl"
    probe.write_text(CUDA_PROBE)
    monkeypatch.setenv("CUDA_PROBE_LOG", str(log))
    worker = Worker(celery=(sys.executable, str(probe)))
    worker.start()
    worker.stop()
    asked = [json.loads(line) for line in log.read_text().splitlines()]
    in_main = [question for question in asked if question["pid"] == worker.proc.pid]
    # Importing diffusers asks whether there is an accelerator: the probe sees the question.
    assert any(question["call"] == "torch.accelerator.is_available" for question in in_main)
    assert [question for question in in_main if question["poisons"]] == []
