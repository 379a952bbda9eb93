"""A recipe's LoRAs change the pixels as stock diffusers' `load_lora_weights` at the same scale
does, whichever layout the file is in; a run without them gets the base model's pixels exactly,
and a LoRA file that is not the recipe's is refused like other weights."""

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from generation import engine
from generation.engine.samplers import scheduler_from_ref

RANK = 4
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def lora_tensors(unet: torch.nn.Module, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random low-rank updates for every attention projection of the UNet, by module name."""
    generator = torch.Generator().manual_seed(seed)
    updates = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(PROJECTIONS):
            down = torch.randn(RANK, module.in_features, generator=generator) * 0.5
            up = torch.randn(module.out_features, RANK, generator=generator) * 0.5
            updates[name] = (down, up)
    return updates


def write_peft(path, updates) -> None:
    tensors = {}
    for name, (down, up) in updates.items():
        tensors[f"unet.{name}.lora_A.weight"], tensors[f"unet.{name}.lora_B.weight"] = down, up
    save_file(tensors, path)


def write_kohya(path, updates) -> None:
    """kohya's layout, as A1111 and Civitai keep LoRAs (alpha = rank: the same update)."""
    tensors = {}
    for name, (down, up) in updates.items():
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = down, up
        tensors[f"{key}.alpha"] = torch.tensor(float(RANK))
    save_file(tensors, path, metadata={"ss_network_dim": str(RANK)})


@pytest.fixture(scope="module")
def model(tiny_model, tmp_path_factory):
    """A copy of the tiny model: its pipeline gets adapters, which no other test should see."""
    path = tmp_path_factory.mktemp("lora-model") / "tiny"
    shutil.copytree(tiny_model, path)
    return str(path)


@pytest.fixture(scope="module")
def pipeline(model):
    return engine.load_pipeline(model, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def files(pipeline, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    updates = lora_tensors(pipeline.unet, seed=1)
    write_peft(folder / "ink.safetensors", updates)
    write_kohya(folder / "ink-kohya.safetensors", updates)
    write_peft(folder / "film.safetensors", lora_tensors(pipeline.unet, seed=2))
    return {path.stem: path for path in folder.iterdir()}


def run(pipeline, model, files, *loras: tuple[str, float], **fields) -> engine.Result:
    values = {"prompt": "a red circle", "steps": 4, "width": 32, "height": 32, "seed": 5,
              "guidance_scale": 4.0, **fields}
    refs = tuple(engine.LoraRef(name=name, weight=weight) for name, weight in loras)
    recipe = engine.build_recipe(model=engine.ModelRef(name="tiny", source=model), loras=refs,
                                 **values)
    return engine.generate(recipe, pipeline=pipeline, preview=None, lora_files=files)


def pixels(result: engine.Result) -> list[np.ndarray]:
    return [np.asarray(image) for image in result.images]


def same(a: engine.Result, b: engine.Result) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(pixels(a), pixels(b), strict=True))


def test_a_lora_equals_stock_diffusers_at_the_same_scale(pipeline, model, files):
    ours = run(pipeline, model, files, ("ink", 0.7), batch_size=2)
    stock = StableDiffusionPipeline.from_pretrained(
        model, use_safetensors=True, safety_checker=None, requires_safety_checker=False
    )
    stock.set_progress_bar_config(disable=True)
    stock.scheduler = scheduler_from_ref(ours.recipes[0].scheduler)
    stock.load_lora_weights(str(files["ink"]), adapter_name="ink")
    stock.set_adapters(["ink"], adapter_weights=[0.7])
    theirs = stock("a red circle", num_images_per_prompt=2, num_inference_steps=4,
                   guidance_scale=4.0, height=32, width=32,
                   generator=[torch.Generator("cpu").manual_seed(5 + i) for i in range(2)]).images
    for a, b in zip(ours.images, theirs, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_loras_change_the_image_deterministically_and_leave_no_trace(pipeline, model, files):
    base = run(pipeline, model, files)
    with_ink = run(pipeline, model, files, ("ink", 1.0))
    assert not same(base, with_ink)
    assert same(with_ink, run(pipeline, model, files, ("ink", 1.0)))
    assert same(with_ink, run(pipeline, model, files, ("ink-kohya", 1.0)))  # either layout
    assert not same(with_ink, run(pipeline, model, files, ("ink", 1.0), ("film", 0.5)))
    assert not same(with_ink, run(pipeline, model, files, ("ink", 0.5)))
    assert same(base, run(pipeline, model, files))  # adapters off: the base model exactly


def test_the_recipe_records_each_loras_file_hash(pipeline, model, files):
    recipe = run(pipeline, model, files, ("ink", 0.25)).recipes[0]
    assert recipe.loras == (engine.LoraRef("ink", 0.25, engine.weights_hash(str(files["ink"]))),)
    assert recipe.to_json()["loras"] == [
        {"name": "ink", "weight": 0.25, "hash": engine.weights_hash(str(files["ink"]))}
    ]


def test_a_lora_file_other_than_the_recipes_is_refused(pipeline, model, files):
    recipe = run(pipeline, model, files, ("ink", 1.0)).recipes[0]
    moved = replace(recipe, loras=(replace(recipe.loras[0], hash="0" * 64),))
    with pytest.raises(engine.WeightsMismatchError, match="LoRA 'ink'"):
        engine.generate(moved, pipeline=pipeline, preview=None, lora_files=files)
    with pytest.raises(engine.GenerationError, match="LoRA 'ink' is not on this worker"):
        engine.generate(recipe, pipeline=pipeline, preview=None, lora_files={})


def test_a_lora_for_another_model_is_refused_before_it_loads(pipeline, model, files, tmp_path):
    wide = tmp_path / "xl.safetensors"
    save_file({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight":
               torch.ones(RANK, 2048),
               "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight":
               torch.ones(16, RANK)}, wide)
    with pytest.raises(engine.ModelLoadError, match="SDXL text"):
        run(pipeline, model, {"xl": wide}, ("xl", 1.0))
    assert same(run(pipeline, model, files), run(pipeline, model, files))
