"""Development mode signs with a key of its own install, never one anyone can read."""

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from studio.secret_key import install_secret_key

ROOT = Path(__file__).resolve().parents[2]
# The key every development server signed with before: public, in the source.
PUBLIC_KEY = "dev-only-insecure-key-do-not-use-in-production-0123456789abcdef"  # noqa: S105


def settings_secret_key(**env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG")}
    environ.update(DJANGO_SETTINGS_MODULE="studio.settings", **env)
    code = "from django.conf import settings; print(settings.SECRET_KEY)"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True
    )


def test_make_run_signs_with_this_installs_random_key_not_one_in_the_source():
    result = settings_secret_key(DEBUG="1")
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert key == (ROOT / ".run" / "secret_key").read_text().strip()
    assert key != PUBLIC_KEY and len(key) >= 50
    assert PUBLIC_KEY not in (ROOT / "studio" / "settings.py").read_text()


def test_production_still_refuses_to_start_without_a_secret_key():
    result = settings_secret_key(DEBUG="0")
    assert result.returncode != 0 and "Set SECRET_KEY" in result.stderr


def test_two_fresh_installs_get_different_keys(tmp_path):
    first = install_secret_key(tmp_path / "one" / ".run")
    second = install_secret_key(tmp_path / "two" / ".run")
    assert first != second
    assert len(first) >= 50 and len(second) >= 50


def test_an_install_keeps_its_key_across_restarts(tmp_path):
    run_dir = tmp_path / ".run"
    key = install_secret_key(run_dir)
    assert install_secret_key(run_dir) == key
    assert (run_dir / "secret_key").read_text() == key


def test_the_key_file_is_readable_by_its_owner_alone(tmp_path):
    install_secret_key(tmp_path / ".run")
    mode = stat.S_IMODE((tmp_path / ".run" / "secret_key").stat().st_mode)
    assert mode == 0o600


def test_processes_starting_together_all_get_the_one_key(tmp_path):
    """make run starts the web server, a worker and the scheduler at the same moment."""
    run_dir, go = tmp_path / ".run", tmp_path / "go"
    code = (
        "import os, runpy, sys, time\n"
        f"module = runpy.run_path({str(ROOT / 'studio' / 'secret_key.py')!r})\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.001)\n"
        f"print(module['install_secret_key'](__import__('pathlib').Path({str(run_dir)!r})))\n"
    )
    starters = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    time.sleep(1.5)  # every process imported and waits at the line
    go.touch()
    keys = {starter.communicate(timeout=60)[0].strip() for starter in starters}
    assert all(starter.returncode == 0 for starter in starters)
    assert keys == {(run_dir / "secret_key").read_text()}
    assert [path.name for path in run_dir.iterdir()] == ["secret_key"]
