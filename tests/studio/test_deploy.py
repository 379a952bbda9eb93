"""What can be checked of the deployment files without a Docker engine."""

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_has_every_service_with_healthchecks_and_a_gpu_worker():
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "web", "worker", "scheduler"}
    assert all("healthcheck" in service for service in services.values())
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "--beat" in services["scheduler"]["command"]
    assert {"media", "models"} <= set(compose["volumes"])


def test_compose_builds_targets_the_dockerfile_defines():
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    dockerfile = (ROOT / "docker/Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\w+)", dockerfile, re.M))
    for name in ("web", "worker", "scheduler"):
        assert compose["services"][name]["build"]["target"] in targets


def test_production_settings_pass_check_deploy():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env.update(DEBUG="0", SECRET_KEY=secrets.token_urlsafe(60), ALLOWED_HOSTS="studio.example.com")
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_plain_http_cookies_are_a_switch_that_check_deploy_still_flags():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env.update(DEBUG="0", SECRET_KEY=secrets.token_urlsafe(60), ALLOWED_HOSTS="studio.example.com",
               SESSION_COOKIE_SECURE="0", CSRF_COOKIE_SECURE="0")
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "security.W012" in result.stderr and "security.W016" in result.stderr


def test_production_refuses_to_start_without_a_secret_key():
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    env["DEBUG"] = "0"
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "Set SECRET_KEY" in result.stderr


def test_the_worker_only_compose_file_runs_one_pinned_named_worker_per_gpu():
    compose = yaml.safe_load((ROOT / "docker/compose.worker.yaml").read_text())
    dockerfile = (ROOT / "docker/Dockerfile").read_text()
    services = compose["services"]
    assert set(services) == {"gpu0", "gpu1"}  # nothing but workers: no database, no web
    for number in range(2):
        service = services[f"gpu{number}"]
        assert service["build"]["target"] in re.findall(r"^FROM \S+ AS (\w+)", dockerfile, re.M)
        assert f"--hostname=gpu{number}@%h" in service["command"]
        assert "--concurrency=1" in service["command"]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "device_ids": [str(number)],
                            "capabilities": ["gpu"]}]
        assert f"-d gpu{number}@$$HOSTNAME" in service["healthcheck"]["test"][1]
        # Images go to the shared store, never to a volume of this host.
        assert service["environment"]["STUDIO_MEDIA_STORAGE"] == "s3"
        assert all("media" not in volume for volume in service["volumes"])


def test_the_worker_env_example_sets_every_variable_the_compose_file_requires():
    text = (ROOT / "docker/compose.worker.yaml").read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    example = (ROOT / "docker/worker.env.example").read_text()
    given = set(re.findall(r"^([A-Z0-9_]+)=", example, re.M))
    assert required and required <= given
    assert "docker/*.env" in (ROOT / ".dockerignore").read_text()  # secrets stay out of images
