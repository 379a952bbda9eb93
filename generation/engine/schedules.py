"""AUTOMATIC1111-style sampler names, the scheduler config each one resolves to on a model, and
the check of a recorded config against it: without importing torch or diffusers.

The web tier validates and records every request's scheduler, yet only a worker needs the
scheduler itself (docs/architecture.md §1). What a sampler resolves to on a model is a
function of the model's scheduler config alone, so ``samplers.resolve_all`` computes it for
every sampler at once, where diffusers is imported already, or else in a short child process
that imports it; the answer is kept in memory and on disk (``STUDIO_CACHE_DIR``), keyed by the
config, the diffusers version and the code that resolves it.
"""

import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from .recipe import SchedulerRef, shown
from .sampler_names import SEEDED_CLASS, SEEDS_KEY, per_image_seeds

# How long a child process may take to import diffusers and resolve every sampler.
RESOLVE_TIMEOUT_SECONDS = 120


def resolved_ref(
    name: str, base_config: dict[str, Any], seed: int, batch_size: int = 1
) -> SchedulerRef:
    """The class and full config ``make_scheduler(name, base_config, seed, batch_size)`` builds,
    as the recipe records them (``samplers.scheduler_ref``).

    Every submission resolves its sampler while the person who pressed Generate waits, so the
    resolution is looked up, not rebuilt. The ref is shared: ``Recipe.to_json`` copies its
    config.
    """
    ref = resolutions(base_config)[0][name]
    if ref.class_name != SEEDED_CLASS:
        return ref
    seeds = per_image_seeds(seed, batch_size)
    return SchedulerRef(ref.class_name, {**ref.config, SEEDS_KEY: seeds})


def resolutions(base_config: dict[str, Any]) -> tuple[dict[str, SchedulerRef], dict[str, dict]]:
    """({sampler name: ref}, {class name: its constructor's defaults}) for a model's config."""
    return _resolutions(json.dumps(base_config, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _resolutions(config_json: str) -> tuple[dict[str, SchedulerRef], dict[str, dict]]:
    path = _cache_dir() / f"{_cache_key(config_json)}.json"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = _resolve(config_json)
        _write_atomically(path, json.dumps(table))
    refs = {name: SchedulerRef(**ref) for name, ref in table["refs"].items()}
    return refs, table["defaults"]


def _resolve(config_json: str) -> dict[str, Any]:
    """``samplers.resolve_all`` here when diffusers is loaded, else in a child process, so a
    process that never generates never holds torch."""
    if "diffusers" in sys.modules:
        from . import samplers  # noqa: PLC0415  (the heavy half, already paid for)

        return samplers.resolve_all(json.loads(config_json))
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "generation.engine.samplers"],
        input=config_json, capture_output=True, text=True, cwd=root,
        timeout=RESOLVE_TIMEOUT_SECONDS, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"resolving the samplers failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def _cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "studio"
    return Path(os.environ.get("STUDIO_CACHE_DIR") or default) / "schedules"


@functools.cache
def _code_version() -> str:
    """The resolving code and diffusers' version: a change to either resolves again."""
    digest = hashlib.sha256(metadata.version("diffusers").encode())
    for name in ("samplers.py", "sampler_names.py", "schedules.py"):
        digest.update((Path(__file__).with_name(name)).read_bytes())
    return digest.hexdigest()


def _cache_key(config_json: str) -> str:
    return hashlib.sha256(f"{_code_version()}\0{config_json}".encode()).hexdigest()


def _write_atomically(path: Path, text: str) -> None:
    """Best effort: without a writable cache every process resolves once for itself."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as f:
            f.write(text)
        os.replace(f.name, path)
    except OSError:
        pass


# Knobs that only place, clip or finish a run's steps, neither the model's schedule nor the
# sampler's method: a recipe made elsewhere (another Studio, other diffusers defaults) may set
# them otherwise, to one of these values (typed: a bool is a bool). Every value here builds
# every sampler's scheduler (tests/generation/test_recipe_trust.py).
TUNABLE: dict[str, tuple[Any, ...]] = {
    "timestep_spacing": ("leading", "linspace", "trailing"),
    "steps_offset": (0, 1),
    "final_sigmas_type": ("zero", "sigma_min"),
    **{key: (False, True) for key in (
        "clip_sample", "set_alpha_to_one", "thresholding", "lower_order_final", "euler_at_final",
    )},
}


def check_scheduler(
    ref: SchedulerRef, name: str, base_config: dict[str, Any], seed: int, batch_size: int = 1
) -> dict[str, str]:
    """Errors of a recipe's scheduler, keyed ``scheduler.class`` and ``scheduler.config.KEY``.

    A recipe may come from anywhere (a PNG's text chunk), and ``from_config`` builds whatever
    its config says: num_train_timesteps=1e9 is gigabytes of betas. So it is checked, without
    building anything, against the ref Studio resolves for this model and sampler:
    1. the class is the sampler's;
    2. every key is one of that ref's keys, with that ref's value (same JSON type, same
       value; lists of the same length), or for a TUNABLE key one of its values;
    3. a key left out means the class's default, which must pass the same rule.
    """
    expected = resolved_ref(name, base_config, seed, batch_size)
    if ref.class_name != expected.class_name:
        return {"scheduler.class": f"must be {expected.class_name} for the sampler {name!r}, "
                                   f"not {shown(ref.class_name)}"}
    config, known = ref.config, expected.config
    if not isinstance(config, dict):
        return {"scheduler.config": "must be an object of scheduler settings"}
    # Before anything iterates over a config of any size; a few strays are named one by one.
    if len(config) > 2 * len(known):
        return {"scheduler.config": f"has {len(config)} settings; {ref.class_name} has "
                                    f"{len(known)}"}
    errors = {}
    for key, value in config.items():
        label = f"scheduler.config.{key if isinstance(key, str) else shown(key)}"
        if key not in known:
            errors[label] = f"is not a setting of {ref.class_name}"
        elif problem := _value_problem(key, value, known[key]):
            errors[label] = problem
    defaults = resolutions(base_config)[1][ref.class_name]
    for key in known.keys() - config.keys():
        default = defaults.get(key, known[key])  # a key the class ignores stays ignored
        if _value_problem(key, default, known[key]):
            errors[f"scheduler.config.{key}"] = (
                f"is missing, and {ref.class_name}'s default ({shown(default)}) is not the "
                "value this model and sampler use"
            )
    return errors


def _value_problem(key: str, value: Any, expected: Any) -> str | None:
    if _same(value, expected):
        return None
    if key in TUNABLE:
        if any(_same(value, allowed) for allowed in TUNABLE[key]):
            return None
        return f"must be one of {', '.join(map(repr, TUNABLE[key]))}, not {shown(value)}"
    if isinstance(expected, list | tuple):
        return f"must be the {len(expected)} values this model and sampler use"
    return f"must be {expected!r} for this model and sampler, not {shown(value)}"


def _same(value: Any, expected: Any) -> bool:
    """Equal and of the same JSON type (True is not 1; 1000.0 is not 1000). Recursion follows
    ``expected``, Studio's own value, and a list's length is compared before its items."""
    if isinstance(expected, list | tuple):
        return (
            isinstance(value, list | tuple)
            and len(value) == len(expected)
            and all(_same(v, e) for v, e in zip(value, expected, strict=True))
        )
    return type(value) is type(expected) and value == expected
