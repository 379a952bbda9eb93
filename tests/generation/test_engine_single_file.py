"""Single-file checkpoints (one .safetensors file in the original SD layout): told apart by
family from the header alone, loaded offline with the shipped configs or the sidecar's, the
same pixels as the same weights in a folder, and refused clearly when Studio cannot run them.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file

from generation import engine
from generation.engine.checkpoints import V_PREDICTION_PROBE, tensor_values
from generation.engine.families import CONFIGS
from generation.engine.specs import config_tokenizer

from ..conftest import ROOT
from .checkpoint_files import pipeline_to_original
from .conftest import FAMILY_NAMES, family_components

UNET = "model.diffusion_model."
TO_K = UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat", CLIP's own ids


def full_size_header_file(path, family: str, **extra: torch.Tensor) -> str:
    """A file whose names and widths are a full-size checkpoint's where detection looks
    (the text encoders, the UNet's first layer and cross-attention), and nothing else."""
    tensors = {UNET + "input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3, dtype=torch.float16)}
    fam = engine.FAMILIES[family]
    for key in fam.text_encoders:
        tensors[key] = torch.zeros(1, 8, dtype=torch.float16)
    tensors[TO_K] = torch.zeros(320, fam.context_width, dtype=torch.float16)
    save_file({**tensors, **extra}, path)
    return str(path)


def copy_checkpoint(model, tmp_path, **sidecar) -> str:
    """The tiny model's file alone in a folder of its own, with the sidecar given."""
    copy = tmp_path / "model.safetensors"
    shutil.copyfile(model.file, copy)
    if sidecar:
        (tmp_path / "model.studio.json").write_text(json.dumps(sidecar))
    return str(copy)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_each_tiny_file_is_told_by_its_family_from_the_header(family, family_models):
    checkpoint = engine.inspect_checkpoint(family_models[family].file)
    assert checkpoint.family.name == family
    assert checkpoint.config_dir == family_models[family].config  # as its sidecar says
    assert checkpoint.evidence.startswith(engine.FAMILIES[family].title)
    assert engine.load_spec(family_models[family].file).family == family


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_single_file_gives_the_same_pixels_and_spec_as_its_folder(family, family_models):
    model = family_models[family]
    results, specs = [], []
    for source in (model.folder, model.file):
        recipe = engine.build_recipe(
            model=engine.ModelRef(name="tiny", source=source), prompt="a red circle", steps=3,
            width=32, height=32, seed=5, batch_size=2, sampler="Euler a", guidance_scale=3.0,
        )
        pipe = engine.load_pipeline(source, device="cpu", dtype=torch.float32)
        results.append(engine.generate(recipe, pipeline=pipe))
        specs.append(engine.load_spec(source))
    folder, single = results
    for a, b in zip(folder.images, single.images, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert folder.recipes[0].scheduler == single.recipes[0].scheduler
    assert (specs[0].family, specs[0].native_size, specs[0].limits) == (
        specs[1].family, specs[1].native_size, specs[1].limits
    )
    # A1111's checkpoint hash: the whole file's sha256.
    assert single.recipes[0].model.hash == hashlib.sha256(Path(model.file).read_bytes()).hexdigest()


def test_a_single_files_preview_projection_is_kept_in_memory_not_beside_it(
    family_models, tmp_path
):
    model = family_models["sd1"]
    source = copy_checkpoint(model, tmp_path, config=str(model.config))
    before = sorted(tmp_path.iterdir())
    recipe = engine.build_recipe(model=engine.ModelRef(name="copy", source=source),
                                 prompt="a red circle", steps=2, width=32, height=32, seed=1)
    previews = []
    result = engine.generate(recipe, on_step=lambda *step: previews.append(step[2]))
    assert len(result.images) == 1 and len(previews[-1].latent_rgb.weights) == 4
    assert sorted(tmp_path.iterdir()) == before


def test_the_file_hash_follows_the_content(family_models, tmp_path):
    source = copy_checkpoint(family_models["sd1"], tmp_path)
    first = engine.weights_hash(source)
    data = bytearray(Path(source).read_bytes())
    data[-1] ^= 1
    Path(source).write_bytes(data)
    os.utime(source, ns=(1, 1))  # the same size; only the mtime tells it changed
    assert engine.weights_hash(source) != first


@pytest.mark.parametrize(
    ("family", "extra", "folder", "native", "prediction"),
    [
        ("sd1", {}, "sd1", 512, "epsilon"),
        ("sd2", {V_PREDICTION_PROBE: torch.linspace(-0.3, 0.3, 320).half()}, "sd2v", 768,
         "v_prediction"),
        ("sd2", {V_PREDICTION_PROBE: torch.linspace(-0.1, 0.1, 320).bfloat16()}, "sd2", 512,
         "epsilon"),
        ("sdxl", {}, "sdxl", 1024, "epsilon"),
        ("sdxl", {"v_pred": torch.zeros(1)}, "sdxl", 1024, "v_prediction"),
    ],
)
def test_a_full_size_file_takes_its_familys_shipped_configs(
    family, extra, folder, native, prediction, tmp_path
):
    source = full_size_header_file(tmp_path / "model.safetensors", family, **extra)
    checkpoint = engine.inspect_checkpoint(source)
    assert checkpoint.family.name == family and checkpoint.config_dir.name == folder
    spec = engine.load_spec(source)
    assert (spec.native_size, spec.scheduler_config["prediction_type"]) == (native, prediction)
    assert spec.limits.max_prompt_tokens == 75
    assert spec.tokenizer("a photo of a cat").input_ids == CAT_IDS


def test_a_tensor_is_read_from_the_file_as_torch_reads_it(tmp_path):
    values = torch.linspace(-0.3, 0.3, 320)
    path = tmp_path / "probe.safetensors"
    save_file({dtype: values.to(getattr(torch, dtype)) for dtype in
               ("float64", "float32", "float16", "bfloat16")}, path)
    header = engine.read_header(path)
    for dtype in ("float64", "float32", "float16", "bfloat16"):
        expected = values.to(getattr(torch, dtype)).double().tolist()
        assert tensor_values(path, header, dtype) == expected


def test_the_sidecar_overrides_the_prediction_type(tmp_path):
    probe = {V_PREDICTION_PROBE: torch.linspace(-0.3, 0.3, 320)}
    source = full_size_header_file(tmp_path / "model.safetensors", "sd2", **probe)
    (tmp_path / "model.studio.json").write_text('{"prediction_type": "epsilon"}')
    spec = engine.load_spec(source)
    assert (spec.native_size, spec.scheduler_config["prediction_type"]) == (512, "epsilon")


def test_the_shipped_tokenizers_pad_as_each_family_does():
    pads = {("sd1", "tokenizer"): 49407, ("sd2", "tokenizer"): 0, ("sd2v", "tokenizer"): 0,
            ("sdxl", "tokenizer"): 49407, ("sdxl", "tokenizer_2"): 0}
    for (folder, subfolder), pad in pads.items():
        tokenizer = config_tokenizer(CONFIGS / folder, subfolder)
        ids = tokenizer("a photo of a cat", padding="max_length").input_ids
        assert ids == CAT_IDS + [pad] * 70 and len(tokenizer) == 49408


def refused(source) -> str:
    with pytest.raises(engine.ModelLoadError) as error:
        engine.load_spec(str(source))
    return str(error.value)


def test_a_pickle_checkpoint_is_refused_unopened(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04 not even read")
    assert "pickle" in refused(ckpt)
    with pytest.raises(engine.ModelLoadError, match="pickle"):
        engine.weights_hash(str(ckpt))
    with pytest.raises(engine.ModelLoadError, match="pickle"):
        engine.load_pipeline(str(ckpt), device="cpu", dtype=torch.float32)


def test_a_truncated_file_is_refused_with_the_sizes(family_models, tmp_path):
    data = Path(family_models["sd1"].file).read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    assert f"truncated: its tensors need {len(data)} bytes, the file has {len(data) // 2}" in (
        refused(cut)
    )
    (tmp_path / "tiny.safetensors").write_bytes(data[:5])
    assert "not a safetensors file" in refused(tmp_path / "tiny.safetensors")


def test_a_lora_given_as_a_model_is_refused_as_a_lora(tmp_path):
    lora = tmp_path / "style.safetensors"
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    save_file({f"{name}.lora_down.weight": torch.zeros(4, 32),
               f"{name}.lora_up.weight": torch.zeros(32, 4)}, lora)
    assert "a LoRA, not a model" in refused(lora)


def test_a_file_of_an_unknown_layout_says_what_it_found(family_models, tmp_path):
    unet = tmp_path / "unet.safetensors"  # a diffusers component, not a whole model
    shutil.copyfile(f"{family_models['sd1'].folder}/unet/diffusion_pytorch_model.safetensors", unet)
    message = refused(unet)
    assert "no UNet in the original layout" in message and "down_blocks" in message
    weights = load_file(family_models["sd1"].file)
    no_text = {k: v for k, v in weights.items() if not k.startswith("cond_stage_model.")}
    save_file(no_text, tmp_path / "bare.safetensors")
    assert "none of the text encoders" in refused(tmp_path / "bare.safetensors")
    instruct = full_size_header_file(tmp_path / "instruct.safetensors", "sd1", **{
        UNET + "input_blocks.0.0.weight": torch.zeros(320, 8, 3, 3, dtype=torch.float16)
    })
    assert "8 input channels" in refused(instruct)


def test_a_full_size_inpainting_file_is_an_inpainting_model_of_its_family(tmp_path):
    inpainting = full_size_header_file(tmp_path / "inpaint.safetensors", "sd1", **{
        UNET + "input_blocks.0.0.weight": torch.zeros(320, 9, 3, 3, dtype=torch.float16)
    })
    checkpoint = engine.inspect_checkpoint(inpainting)
    assert (checkpoint.family.name, checkpoint.unet_in_channels) == ("sd1", 9)
    assert engine.load_spec(inpainting).inpainting


def test_an_inpainting_file_with_text_to_image_configs_loads_as_its_folder(family_models,
                                                                           tmp_path):
    # The shipped configs are text to image (4 input channels), as is this sidecar's folder:
    # the UNet's input width comes from the file, as it must for a real inpainting file.
    components = family_components("sd1")
    torch.manual_seed(0)
    components["unet"] = UNet2DConditionModel.from_config(
        {**components["unet"].config, "in_channels": 9})
    pipe = StableDiffusionInpaintPipeline(**components)
    pipe.save_pretrained(tmp_path / "folder", safe_serialization=True)
    file = tmp_path / "inpaint.safetensors"
    save_file(pipeline_to_original(pipe, "sd1"), file)
    config = family_models["sd1"].config
    (tmp_path / "inpaint.studio.json").write_text(json.dumps({"config": str(config)}))
    assert engine.load_spec(str(file)).inpainting
    loaded = engine.load_pipeline(str(file), device="cpu", dtype=torch.float32)
    folder = engine.load_pipeline(str(tmp_path / "folder"), device="cpu", dtype=torch.float32)
    assert loaded.unet.config.in_channels == 9
    for name, weight in folder.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[name], weight), name


def test_a_file_not_of_full_size_needs_its_own_configs(family_models, tmp_path):
    source = copy_checkpoint(family_models["sd1"], tmp_path)
    assert "reads text 32 wide, but the configs" in refused(source)
    (tmp_path / "model.studio.json").write_text('{"steps": 3}')
    assert "unknown settings ['steps']" in refused(source)


@pytest.mark.parametrize(
    "key", [UNET + "out.2.bias", "cond_stage_model.transformer.text_model.final_layer_norm.bias"]
)
def test_a_file_missing_weights_is_refused_at_load(key, family_models, tmp_path):
    weights = load_file(family_models["sd1"].file)
    del weights[key]
    source = tmp_path / "model.safetensors"
    save_file(weights, source)
    (tmp_path / "model.studio.json").write_text(
        json.dumps({"config": str(family_models["sd1"].config)})
    )
    with pytest.raises(engine.ModelLoadError, match="weights its configs name are missing"):
        engine.load_pipeline(str(source), device="cpu", dtype=torch.float32)


def test_the_web_tier_reads_a_single_files_spec_without_torch(tmp_path):
    source = full_size_header_file(tmp_path / "model.safetensors", "sdxl")
    code = (
        "import sys; from generation.engine import load_spec; "
        "spec = load_spec(sys.argv[1]); "
        "print(spec.family, spec.native_size, sorted({'torch', 'diffusers'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code, source], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "sdxl 1024 []"
