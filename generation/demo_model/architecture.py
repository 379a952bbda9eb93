"""Configs of the demo model's components, full size and a tiny one for tests.

The full size is the calibration run that worked on 2 CPU cores: attention only at
8x8 and 4x4, because attention at 16x16 cost 7-10x more per step.
"""

from dataclasses import dataclass

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .dataset import IMAGE_SIZE

LATENT_CHANNELS = 4
TRAIN_TIMESTEPS = 1000
# Cosine schedule: its alpha-bar at t=999 is ~0, so training covers pure noise where sampling
# starts; v-prediction keeps the target well scaled there, where epsilon-prediction failed.
SCHEDULE = {
    "num_train_timesteps": TRAIN_TIMESTEPS,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
}


@dataclass(frozen=True)
class Size:
    vae_channels: tuple[int, ...]
    text_width: int
    text_layers: int
    unet_channels: tuple[int, ...]
    norm_groups: int


FULL = Size(
    vae_channels=(16, 32, 64),
    text_width=128,
    text_layers=3,
    unet_channels=(32, 64, 64),
    norm_groups=16,
)
TINY = Size(
    vae_channels=(8, 8, 8), text_width=16, text_layers=1, unet_channels=(8, 16, 16), norm_groups=4
)
SIZES = {"full": FULL, "tiny": TINY}


def latent_size(size: Size) -> int:
    return IMAGE_SIZE // 2 ** (len(size.vae_channels) - 1)


def build_vae(size: Size) -> AutoencoderKL:
    blocks = len(size.vae_channels)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=size.vae_channels,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=min(size.norm_groups, size.vae_channels[0]),
        sample_size=IMAGE_SIZE,
        # Attention at 16x16 in the decoder would cost more than the whole UNet step; shapes
        # and flat colours need no global context to reconstruct.
        mid_block_add_attention=False,
    )


def build_text_encoder(size: Size, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.text_width,
        intermediate_size=4 * size.text_width,
        num_hidden_layers=size.text_layers,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=size.text_width,
    )
    return CLIPTextModel(config)


def build_unet(size: Size) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=latent_size(size),
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=size.unet_channels,
        layers_per_block=1,
        norm_num_groups=size.norm_groups,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        attention_head_dim=4,
        cross_attention_dim=size.text_width,
    )


def training_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE)


def sampling_scheduler() -> DDIMScheduler:
    """The scheduler saved with the weights, so a stock pipeline samples well with no arguments.

    Trailing spacing makes the first step t=999, the pure noise the model was trained on;
    ``set_alpha_to_one`` lets the last step land on the clean image; latents are not in [-1, 1],
    so no clipping. Trailing spacing ignores ``steps_offset``; it is 1 only because stock
    pipelines warn about and rewrite any other value.
    """
    return DDIMScheduler(
        **SCHEDULE,
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_sample=False,
        steps_offset=1,
    )
