"""tests/benchmarks/gpu_throughput.py keeps working: its ``--small`` run, on the tests' tiny
SD 1.x and SDXL models on the CPU, reports every figure the GPU run does, and Studio's path
gives stock diffusers' pixels where it should (docs/performance.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# It runs the script in a process of its own.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "benchmarks" / "gpu_throughput.py"
VARIANT_KEYS = {"seconds_per_image", "seconds", "unet_its_per_second", "peak_memory_bytes",
                "dtype", "match_stock", "speedup", "unet_tflops", "mfu"}


def test_the_small_run_reports_every_figure():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--small", "--peak-tflops", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    *lines, last = done.stdout.strip().splitlines()
    report = json.loads(last)

    assert set(report) == {"mode", "device", "peak_tflops", "torch", "diffusers", "models",
                           "run_seconds"}
    assert (report["mode"], report["device"], set(report["models"])) == (
        "small", "cpu", {"sd1", "sdxl"})
    for family, figures in report["models"].items():
        assert set(figures) == {"family", "width", "height", "steps", "build_seconds", "params",
                                "stock", "unet_flops_per_step", "studio_eager", "studio"}
        assert figures["unet_flops_per_step"] > 0
        assert set(figures["stock"]) == VARIANT_KEYS
        assert set(figures["studio_eager"]) == VARIANT_KEYS
        assert set(figures["studio"]) == VARIANT_KEYS | {"warm_up_seconds", "failed_modes",
                                                         "fast_path", "attention"}
        assert figures["studio"]["fast_path"] == {"compile": "off", "channels_last": True,
                                                  "fused_qkv": True}
        assert figures["studio"]["attention"] == ["FusedAttnProcessor2_0"]
        # The engine is the stock pipeline: the same dtype gives the same pixels; the fast
        # path moves only the last bits of a float (tests/generation/test_fast_path.py).
        assert figures["studio_eager"]["match_stock"] == "identical", family
        assert figures["studio"]["match_stock"] in ("identical", "within one level"), family
        for variant in ("stock", "studio_eager", "studio"):
            assert figures[variant]["mfu"] == pytest.approx(figures[variant]["unet_tflops"])
            assert figures[variant]["seconds_per_image"] > 0
    assert "studio_eager" in "\n".join(lines)
