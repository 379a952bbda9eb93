"""tests/benchmarks/model_sizes.py keeps working: its ``--small`` run, on the tests' tiny SD 1.x
model, prints every figure the full-size run reports (docs/performance.md)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# It runs the script in a process of its own (from a helper, which conftest's name check
# does not see).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "benchmarks" / "model_sizes.py"
MEMORY_KEYS = {"ru_maxrss", "vm_hwm", "vm_rss", "rss_anon", "rss_file"}


def run_small(keep: Path) -> tuple[str, dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--small", "--dtype", "fp16", "--keep", str(keep)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    *table, last = done.stdout.strip().splitlines()
    return "\n".join(table), json.loads(last)


def test_the_small_run_reports_every_figure(tmp_path):
    table, figures = run_small(tmp_path)

    assert set(figures) == {"mode", "machine", "file", "hash", "spec", "cpu", "extra_load",
                            "gpu", "run_seconds"}
    assert figures["mode"] == "small"
    assert set(figures["machine"]) == {"cpus", "load_average", "torch"}
    file = figures["file"]
    assert set(file) == {"name", "bytes", "tensors", "params", "build"}
    kept = tmp_path / file["name"]
    assert file["bytes"] == kept.stat().st_size
    assert set(file["build"]) == {"seconds", "memory"}  # built now, in the child process
    assert set(file["build"]["memory"]) == MEMORY_KEYS

    hashed = figures["hash"]
    assert set(hashed) == {
        "sha256", "first_seconds", "first_page_cache_share", "cold_seconds",
        "cold_page_cache_share", "cached_seconds", "first_bytes_per_second",
        "cold_bytes_per_second", "memory_bytes_per_second",
    }
    assert hashed["sha256"] == hashlib.sha256(kept.read_bytes()).hexdigest()
    assert hashed["cached_seconds"] < hashed["first_seconds"]

    spec = figures["spec"]
    assert set(spec) == {"family", "evidence", "native_size", "inspect_seconds",
                         "load_spec_seconds", "load_spec_cached_seconds"}
    assert (spec["family"], spec["native_size"]) == ("sd1", 64)

    cpu = figures["cpu"]
    assert set(cpu) == {
        "dtype", "threads", "imports_seconds", "load_seconds", "memory_after_load", "width",
        "height", "steps", "sampler", "guidance", "step_seconds", "decode_seconds",
        "total_seconds", "memory_after_generate",
    }
    assert (cpu["dtype"], cpu["width"], cpu["height"]) == ("float32", 64, 64)
    assert len(cpu["step_seconds"]) == cpu["steps"] == 2
    assert cpu["total_seconds"] > sum(cpu["step_seconds"]) + cpu["decode_seconds"]
    for when in ("memory_after_load", "memory_after_generate"):
        assert set(cpu[when]) == MEMORY_KEYS
        assert cpu[when]["vm_hwm"] >= cpu[when]["vm_rss"] > 0  # one read of /proc
        assert cpu[when]["ru_maxrss"] > 0

    assert figures["extra_load"]["dtype"] == "float16"
    assert set(figures["extra_load"]) == {"dtype", "load_seconds", "memory_after_load"}
    assert figures["gpu"] is None or figures["gpu"]["step_seconds"] > 0
    assert "whole run" in table
