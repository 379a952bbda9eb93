"""Every environment variable Studio reads is in docs/configuration.md, the one reference the
README, the operations guide and the compose files point operators to."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# The helpers settings.py reads variables with, and os.environ itself.
READ = re.compile(
    r"(?:env[a-z]*|os\.environ\.get|os\.environ\.setdefault|os\.getenv)\(\s*\"([A-Z][A-Z0-9_]+)\""
)
# Read by libraries or by Python itself, not by Studio: documented where they matter.
NOT_STUDIOS = {"DJANGO_SETTINGS_MODULE", "PYTORCH_NVML_BASED_CUDA_CHECK", "OMP_WAIT_POLICY",
               "XDG_CACHE_HOME"}


def variables_read() -> set[str]:
    names = set()
    for path in [*ROOT.glob("studio/*.py"), *ROOT.glob("generation/**/*.py"),
                 *ROOT.glob("gallery/*.py")]:
        names |= set(READ.findall(path.read_text()))
    return names - NOT_STUDIOS


def documented() -> set[str]:
    table = (ROOT / "docs/configuration.md").read_text()
    return set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))


def test_the_scan_finds_the_settings_we_know_are_read():
    assert {"SECRET_KEY", "DATABASE_URL", "STUDIO_DEVICE", "STUDIO_CACHE_DIR"} <= variables_read()


def test_every_variable_studio_reads_is_documented():
    assert variables_read() - documented() == set()


def test_the_compose_files_set_only_variables_studio_or_its_libraries_read():
    # boto3 reads the store's keys itself; Studio never copies them into its settings.
    known = variables_read() | {"HF_HOME", "HF_HUB_OFFLINE", "FORWARDED_ALLOW_IPS",
                                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for name in ("compose.yaml", "compose.worker.yaml"):
        compose = yaml.safe_load((ROOT / "docker" / name).read_text())
        for service in compose["services"].values():
            # The database and Redis images' own variables are theirs.
            if "build" not in service:
                continue
            unknown = set(service.get("environment", {})) - known
            assert not unknown, f"{name}: {unknown}"
