"""A tiny Stable-Diffusion-style model for engine tests, built like diffusers' fast tests
(``get_dummy_components``) with the demo model's schedule: cosine betas, v-prediction, DDIM
with trailing spacing. Saved with ``save_pretrained`` and loaded back, as real models are."""

import string
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from generation import engine
from generation.demo_model.architecture import sampling_scheduler

MAX_TOKENS = 24
DEMO_WEIGHTS = Path(__file__).resolve().parents[2] / "generation" / "demo_model" / "weights"


def tiny_components() -> dict:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(4, 8, 8),  # x4, like the demo model
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=2,
        scaling_factor=0.5,  # not SD's, so previews fit their own projection
    )
    # Letters and digits as tokens: no merges to learn, and prompt lengths easy to reason about.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    scheduler = sampling_scheduler()
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


@pytest.fixture(autouse=True)
def one_thread():
    # Two busy cores: a second intra-op thread only waits for the first (10-100x slower).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model) -> engine.StudioPipeline:
    return engine.load_pipeline(tiny_model, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_ref(tiny_model) -> engine.ModelRef:
    return engine.ModelRef(name="tiny", source=tiny_model)


@pytest.fixture
def make_recipe(tiny_ref):
    """A validated recipe for the tiny model: 32x32, 4 steps, unless told otherwise."""

    def make(**fields) -> engine.Recipe:
        values = {"prompt": "a red circle", "steps": 4, "width": 32, "height": 32, "seed": 7}
        return engine.build_recipe(model=tiny_ref, **{**values, **fields})

    return make


@pytest.fixture(scope="session")
def demo_pipeline() -> engine.StudioPipeline:
    if not (DEMO_WEIGHTS / "model_index.json").is_file():
        pytest.skip("the demo model's weights are not in generation/demo_model/weights yet")
    return engine.load_pipeline(str(DEMO_WEIGHTS), device="cpu", dtype=torch.float32)
