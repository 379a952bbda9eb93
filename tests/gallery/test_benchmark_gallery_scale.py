"""tests/benchmarks/gallery_scale.py keeps working: a small run, on a database of the test's
own, times every listing and ends with its JSON line (docs/performance.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

# It runs the script, and the script a web server, in processes of their own.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "benchmarks" / "gallery_scale.py"


def test_a_small_run_times_every_listing():
    database = f"studio_gallery_scale_test_{os.getpid()}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    try:
        done = subprocess.run(
            [sys.executable, str(SCRIPT), "--images", "1500", "--runs", "3", "--deep", "3",
             "--db", database],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )
    finally:
        with psycopg.connect(dbname="postgres", user="postgres", host="127.0.0.1",
                             autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    assert done.returncode == 0, done.stderr[-4000:]
    *table, last = done.stdout.strip().splitlines()
    figures = json.loads(last)
    assert figures.pop("_setup")["images"] == 1500
    assert {"page public new, deep", "page mine", "page team", "page collection of 50",
            "api search", "api public liked, deep"} <= set(figures)
    assert all(0 < f["p50"] <= f["p95"] for f in figures.values())
    assert len(table) == len(figures)
