"""Reading settings from the environment: each helper names the variable when its value does
not parse, so Studio refuses to start with the reason instead of running on a guess
(studio/settings.py; every variable in docs/configuration.md)."""

import ipaddress
import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), not {value!r}")


def envint(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}") from exc


# Units a size may carry: decimal as disks count, binary as GPUs and `free -g` do.
BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
              "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def envbytes(name: str, default: int) -> int:
    """A size: a whole number of bytes, or a number with a unit (`12GB`, `11.5GiB`)."""
    value = os.environ.get(name, "").strip()
    number = value.rstrip("BbKkMmGgTtIi ")
    unit = value[len(number):].strip().lower()
    try:
        size = float(number) * BYTE_UNITS[unit] if value else default
    except (KeyError, ValueError):
        size = -1
    if not 0 <= size < 2**63:  # also NaN and infinity
        raise ImproperlyConfigured(
            f"{name} must be a size, in bytes or with a unit (12GB, 11.5GiB), not {value!r}"
        )
    return int(size)


def envchoice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, "") or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def envnetworks(name: str) -> list[str]:
    """IP addresses and CIDR networks, comma-separated; each must parse, so a typo stops the
    server at start instead of silently allowing nothing."""
    entries = envlist(name, "")
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"{name} entry {entry!r} is not an IP address or network") from exc
    return entries


# A model's name as STUDIO_MODELS, the models folder and the admin may give it (settings
# re-exports it).
MAX_MODEL_NAME = 100


def parse_models(value: str) -> dict[str, str]:
    """Parse STUDIO_MODELS, `name=source,name=source`, into {name: source}."""
    models = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, source = item.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise ImproperlyConfigured(f"STUDIO_MODELS entry {item!r} is not name=source")
        if len(name.strip()) > MAX_MODEL_NAME:
            raise ImproperlyConfigured(f"STUDIO_MODELS name {name.strip()!r} is longer than "
                                       f"{MAX_MODEL_NAME} characters")
        models[name.strip()] = source.strip()
    return models


def envpath(name: str, default: Path) -> Path:
    """A folder from the environment; a relative one is taken from the project root, so the
    web server, the workers and manage.py agree whatever their working directory."""
    return BASE_DIR / os.environ.get(name, default)


def in_models_dir(name: str, root: Path) -> bool:
    """Whether the models folder holds a model called `name` (generation.registry scans it):
    `name.safetensors`, or a diffusers folder `name/` with its model_index.json."""
    return (root / f"{name}.safetensors").is_file() or (root / name / "model_index.json").is_file()
