"""The models folder and the weights-hash cache (generation.registry): what a scan finds and
names, which source wins a name, and that only the worker and `manage.py models` hash."""

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from safetensors.numpy import save_file

from generation import engine, registry
from generation.admin import ModelSourceForm
from generation.models import ModelSource, WeightsHash

pytestmark = pytest.mark.django_db


def write_safetensors(path: Path, metadata: dict | None = None) -> Path:
    """A small valid safetensors file with a checkpoint's key, enough for a listing."""
    weights = {"model.diffusion_model.input_blocks.0.0.weight": np.zeros((4, 4, 3, 3),
                                                                         np.float16)}
    save_file(weights, str(path), metadata=metadata)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def models_dir(settings, tmp_path, tiny_model) -> Path:
    return use_models_dir(settings, tmp_path / "models", tiny_model)


def use_models_dir(settings, root: Path, tiny_model: str) -> Path:
    """A models folder, in use: the tiny diffusers model (a link, as people link big folders
    in), a checkpoint file, a LoRA folder with one LoRA, and things that are not models."""
    (root / "lora").mkdir(parents=True)
    (root / "tiny-folder").symlink_to(tiny_model, target_is_directory=True)
    write_safetensors(root / "tiny-file.safetensors")
    write_safetensors(root / "lora" / "style.safetensors", {
        "ss_network_dim": "4", "ss_tag_frequency": json.dumps({"set": {"red": 2}}),
    })
    (root / "notes.txt").write_text("not a model")
    (root / "half-copied").mkdir()  # a folder without model_index.json
    write_safetensors(root / ".hidden.safetensors")
    settings.STUDIO_MODELS_DIR = root
    settings.STUDIO_LORAS_DIR = root / "lora"
    registry.refresh()
    return root


def test_checkpoints_are_named_by_stem_and_diffusers_folders_by_name(models_dir):
    assert registry.from_folder() == {
        "tiny-file": str(models_dir / "tiny-file.safetensors"),
        "tiny-folder": str(models_dir / "tiny-folder"),
    }
    assert registry.loras() == {"style": str(models_dir / "lora" / "style.safetensors")}


def test_settings_come_first_then_the_folder_then_the_admin(settings, models_dir, tiny_model):
    settings.STUDIO_MODELS = {"from-settings": tiny_model}
    ModelSource.objects.create(name="from-admin", source=tiny_model)
    assert list(registry.models()) == [
        django_settings.STUDIO_DEMO_MODEL_NAME, "from-settings", "tiny-file", "tiny-folder",
        "from-admin",
    ]


def test_on_a_clash_settings_win_over_the_folder_and_the_folder_over_the_admin(
    settings, models_dir, tiny_model
):
    settings.STUDIO_MODELS = {"tiny-file": tiny_model}
    registry.refresh()
    ModelSource.objects.create(name="tiny-folder", source="/elsewhere")
    known = registry.models()
    assert known["tiny-file"] == tiny_model
    assert known["tiny-folder"] == str(models_dir / "tiny-folder")
    form = ModelSourceForm({"name": "tiny-folder", "source": tiny_model, "enabled": True})
    assert not form.is_valid() and "models folder" in form.errors["name"][0]


def test_a_diffusers_folder_wins_over_a_checkpoint_of_its_name(models_dir, tiny_model):
    write_safetensors(models_dir / "tiny-folder.safetensors")
    assert registry.from_folder()["tiny-folder"] == str(models_dir / "tiny-folder")


def test_a_scan_is_kept_until_the_folder_changes_or_a_refresh(models_dir, tiny_model):
    assert "half-copied" not in registry.from_folder()
    # The copy finishes: the model's files land inside its folder, the models folder's own
    # mtime stays, and the kept scan does not see it until a refresh.
    shutil.copytree(tiny_model, models_dir / "half-copied", dirs_exist_ok=True)
    assert "half-copied" not in registry.from_folder()
    registry.refresh()
    assert "half-copied" in registry.from_folder()
    write_safetensors(models_dir / "dropped-in.safetensors")  # the folder's mtime changes
    assert "dropped-in" in registry.from_folder()


def test_no_models_folder_is_no_models(settings, tmp_path):
    settings.STUDIO_MODELS_DIR = tmp_path / "absent"
    assert registry.from_folder() == {}
    assert list(registry.models()) == [django_settings.STUDIO_DEMO_MODEL_NAME]


def test_the_scan_and_the_hash_lookup_read_no_weights(models_dir):
    """A 64 GB checkpoint (sparse: it takes no disk) is listed, and its hash looked up, at
    once: reading it would take most of a minute."""
    huge = models_dir / "huge.safetensors"
    with huge.open("wb") as file:
        file.truncate(64 * 2**30)
    started = time.perf_counter()
    assert registry.from_folder()["huge"] == str(huge)
    assert registry.known_hash(str(huge)) is None
    assert time.perf_counter() - started < 1


def test_manage_py_models_lists_and_hashes_what_is_missing(models_dir, tiny_model, capsys):
    assert not WeightsHash.objects.exists()
    call_command("models", "--json")
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert all(set(row) == {"name", "source", "hash", "family", "native_size"}
               for row in rows.values())
    folder = rows["tiny-folder"]
    assert folder["source"] == str(models_dir / "tiny-folder")
    assert folder["hash"] == engine.weights_hash(tiny_model) and folder["native_size"] == 32
    assert folder["family"] is None or isinstance(folder["family"], str)
    # The checkpoint is not a loadable model, but its file is hashed where the engine can.
    checkpoint = models_dir / "tiny-file.safetensors"
    assert rows["tiny-file"]["hash"] in (None, sha256(checkpoint))
    # Kept for every process, by the resolved path the link points to.
    row = WeightsHash.objects.get(path=str(Path(tiny_model).resolve()))
    assert row.sha256 == folder["hash"]
    assert registry.known_hash(str(models_dir / "tiny-folder")) == folder["hash"]


def test_a_file_changed_since_it_was_hashed_is_hashed_again(tmp_path, tiny_model):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    first = registry.weights_hash(str(copy))
    assert registry.known_hash(str(copy)) == first
    weights = next(copy.glob("unet/*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert registry.known_hash(str(copy)) is None  # another mtime: stale
    second = registry.weights_hash(str(copy))
    assert second != first and registry.known_hash(str(copy)) == second
    assert WeightsHash.objects.count() == 1


def test_a_file_replaced_with_its_old_mtime_but_another_size_is_stale(tmp_path):
    checkpoint = write_safetensors(tmp_path / "a.safetensors")
    WeightsHash.objects.create(path=str(checkpoint.resolve()), size=checkpoint.stat().st_size,
                               mtime_ns=checkpoint.stat().st_mtime_ns, sha256="ab" * 32)
    assert registry.known_hash(str(checkpoint)) == "ab" * 32
    stat = checkpoint.stat()
    write_safetensors(checkpoint, {"more": "x" * 100})
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert registry.known_hash(str(checkpoint)) is None


def test_building_a_recipe_never_hashes(tiny_model):
    recipe = engine.build_recipe(model=engine.ModelRef(name="tiny", source=tiny_model),
                                 prompt="red circle", seed=1)
    assert recipe.model.hash == ""
    assert registry.get("missing") is None


def test_lora_metadata_is_read_from_the_header(models_dir):
    metadata = registry.lora_metadata(str(models_dir / "lora" / "style.safetensors"))
    assert metadata == {"ss_network_dim": "4", "ss_tag_frequency": {"set": {"red": 2}}}
    broken = models_dir / "lora" / "broken.safetensors"
    broken.write_bytes(b"\xff" * 16)
    assert registry.lora_metadata(str(broken)) == {}
