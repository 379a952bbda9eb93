"""The web tier validates and records requests without torch or diffusers (docs/architecture.md
§1): what a sampler resolves to is looked up (engine/schedules.py), resolved by the engine's
heavy half where it is loaded or in a child process where it is not, and both answers are
the scheduler a worker builds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from generation.engine import SAMPLERS, load_spec
from generation.engine import schedules as schedules_module
from generation.engine.samplers import make_scheduler, scheduler_ref
from generation.engine.schedules import resolutions, resolved_ref

from ..conftest import ROOT, database_url
from .conftest import DEMO_WEIGHTS

HEAVY = ("torch", "diffusers")

# A web process: Django, every URL and its views imported, the generate page's form and a
# request validated into a recipe, as a POST to any door does.
WEB_PROCESS = """
import json, sys
import django
django.setup()
from django.urls import get_resolver
import studio.asgi
get_resolver().url_patterns
from generation import forms, job_request, recipes
forms.generate_form({})
recipe = recipes.recipe_for(job_request.parse(
    {"prompt": "a red circle", "sampler": "DPM++ SDE Karras", "seed": 7, "batch_size": 2}))
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[1:]))
print(json.dumps({"heavy": heavy, "scheduler": recipe["scheduler"]}))
"""


def as_json(value):
    return json.loads(json.dumps(value))


@pytest.mark.django_db(transaction=True)
def test_a_web_process_validates_a_request_without_torch_or_diffusers(tmp_path):
    env = {**os.environ, "DATABASE_URL": database_url(), "STUDIO_CACHE_DIR": str(tmp_path),
           "DJANGO_SETTINGS_MODULE": "studio.settings"}
    done = subprocess.run([sys.executable, "-c", WEB_PROCESS, *HEAVY], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["heavy"] == []
    # The child process resolved the samplers (the cache was empty) to what a worker builds.
    config = load_spec(str(DEMO_WEIGHTS)).scheduler_config
    built = scheduler_ref(make_scheduler("DPM++ SDE Karras", config, seed=7, batch_size=2))
    assert seen["scheduler"] == {"class": built.class_name, "config": as_json(built.config)}
    assert len(list((tmp_path / "schedules").glob("*.json"))) == 1


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize(("seed", "batch_size"), [(0, 1), (123, 3)])
def test_a_looked_up_resolution_is_the_scheduler_a_worker_builds(name, seed, batch_size):
    config = load_spec(str(DEMO_WEIGHTS)).scheduler_config
    looked_up = resolved_ref(name, config, seed, batch_size)
    built = scheduler_ref(make_scheduler(name, config, seed, batch_size))
    assert looked_up.class_name == built.class_name
    assert looked_up.config == as_json(built.config)


def test_the_table_is_kept_on_disk_and_a_damaged_file_is_resolved_again(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path))
    schedules_module._resolutions.cache_clear()
    config = {**load_spec(str(DEMO_WEIGHTS)).scheduler_config, "num_train_timesteps": 999}
    refs, _ = resolutions(config)
    [kept] = (tmp_path / "schedules").glob("*.json")
    assert json.loads(kept.read_text())["refs"]["Euler"]["config"]["num_train_timesteps"] == 999

    kept.write_text("{not json")
    schedules_module._resolutions.cache_clear()
    assert resolutions(config)[0] == refs
    assert json.loads(kept.read_text())["refs"].keys() == SAMPLERS.keys()
    schedules_module._resolutions.cache_clear()


def test_the_spec_reads_the_configs_as_diffusers_does():
    from diffusers import DDPMScheduler

    spec = load_spec(str(DEMO_WEIGHTS))
    stock = DDPMScheduler.load_config(DEMO_WEIGHTS, subfolder="scheduler")
    assert spec.scheduler_config == dict(stock)


def test_the_engine_package_keeps_the_heavy_modules_out_of_its_light_imports():
    """Each light module names no torch, diffusers or heavy sibling at its top."""
    engine_dir = Path(ROOT) / "generation" / "engine"
    light = ("recipe", "specs", "sampler_names", "schedules", "validation", "pngmeta",
             "comparison", "__init__")
    heavy = {"torch", "diffusers", ".models", ".sampling", ".previews", ".samplers", ".seeds"}
    for name in light:
        source = (engine_dir / f"{name}.py").read_text()
        top = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
        named = {line.split()[1] for line in top}
        assert not named & heavy, f"{name}.py imports {named & heavy}"


def test_every_public_name_is_what_it_says_once_every_module_is_loaded():
    """A module named like a lazy name would replace it on the package once imported."""
    import importlib
    import pkgutil
    import types

    from generation import engine

    for module in pkgutil.iter_modules(engine.__path__):
        importlib.import_module(f"generation.engine.{module.name}")
    for name in engine.__all__:
        assert not isinstance(getattr(engine, name), types.ModuleType), name
