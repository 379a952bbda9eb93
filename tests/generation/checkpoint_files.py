"""A diffusers pipeline's weights in the original (CompVis/SGM, AUTOMATIC1111) single-file
layout, so tests can write single-file checkpoints of tiny models.

diffusers converts only the other way (``diffusers.loaders.single_file_utils``), and its repo's
scripts hard-code the full-size block counts. This takes the block indices from the configs,
so two-level tiny models convert too; it is the inverse of diffusers' ``convert_ldm_*``
functions, which ``from_single_file`` uses to read the file back.
"""

import torch

UNET = "model.diffusion_model."
RESNET = (
    ("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"),
)
UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
}
VAE_ATTENTION = (
    ("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"),
)
OPEN_CLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}


def _resnet(rest: str) -> str:
    for ours, theirs in RESNET:
        if rest.startswith(ours + "."):
            return theirs + rest[len(ours):]
    raise KeyError(rest)


def _unet_key(key: str, per_level: int, up_attention: list[bool]) -> str:
    p = key.split(".")
    head = ".".join(p[:2]) if p[0] in ("time_embedding", "add_embedding") else p[0]
    if head in UNET_TOP:
        return UNET_TOP[head] + key[len(head):]
    if p[0] == "mid_block":
        if p[1] == "resnets":
            return f"middle_block.{2 * int(p[2])}.{_resnet('.'.join(p[3:]))}"
        return f"middle_block.1.{'.'.join(p[3:])}"
    level, rest = int(p[1]), ".".join(p[4:])
    if p[0] == "down_blocks":
        block = 1 + level * (per_level + 1) + (int(p[3]) if p[2] != "downsamplers" else per_level)
        if p[2] == "resnets":
            return f"input_blocks.{block}.0.{_resnet(rest)}"
        if p[2] == "attentions":
            return f"input_blocks.{block}.1.{rest}"
        return f"input_blocks.{block}.0.op.{p[-1]}"
    if p[0] == "up_blocks":
        block = level * (per_level + 1) + (int(p[3]) if p[2] != "upsamplers" else per_level)
        if p[2] == "resnets":
            return f"output_blocks.{block}.0.{_resnet(rest)}"
        if p[2] == "attentions":
            return f"output_blocks.{block}.1.{rest}"
        return f"output_blocks.{block}.{2 if up_attention[level] else 1}.conv.{p[-1]}"
    raise KeyError(key)


def unet_to_original(state: dict, config) -> dict:
    per_level = config["layers_per_block"]
    up_attention = ["CrossAttn" in kind for kind in config["up_block_types"]]
    return {UNET + _unet_key(key, per_level, up_attention): value for key, value in state.items()}


def _vae_key(rest: list[str], levels: int) -> str:
    if rest[0] == "down_blocks":
        level = int(rest[1])
        if rest[2] == "resnets":
            return f"down.{level}.block.{rest[3]}.{'.'.join(rest[4:])}"
        return f"down.{level}.downsample.conv.{rest[-1]}"
    if rest[0] == "up_blocks":
        level = levels - 1 - int(rest[1])
        if rest[2] == "resnets":
            return f"up.{level}.block.{rest[3]}.{'.'.join(rest[4:])}"
        return f"up.{level}.upsample.conv.{rest[-1]}"
    if rest[0] == "mid_block" and rest[1] == "resnets":
        return f"mid.block_{int(rest[2]) + 1}.{'.'.join(rest[3:])}"
    if rest[0] == "mid_block":
        sub = ".".join(rest[3:])
        for ours, theirs in VAE_ATTENTION:
            if sub.startswith(ours + "."):
                sub = theirs + sub[len(ours):]
        return f"mid.attn_1.{sub}"
    if rest[0] == "conv_norm_out":
        return "norm_out." + rest[-1]
    return ".".join(rest)


def vae_to_original(state: dict, config) -> dict:
    levels = len(config["block_out_channels"])
    out = {}
    for key, value in state.items():
        p = key.split(".")
        if p[0] in ("quant_conv", "post_quant_conv"):
            out["first_stage_model." + key] = value
            continue
        if p[1] == "mid_block" and p[2] == "attentions" and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)  # the original's attention is 1x1 convs
        name = _vae_key(p[1:], levels).replace("conv_shortcut", "nin_shortcut")
        out[f"first_stage_model.{p[0]}.{name}"] = value
    return out


def _flat(state: dict) -> dict:
    # transformers 5 flattens CLIPTextModel's keys (no "text_model."); WithProjection keeps it.
    return {
        key.removeprefix("text_model."): value
        for key, value in state.items()
        if not key.endswith("position_ids")
    }


def clip_to_original(state: dict, prefix: str) -> dict:
    return {
        f"{prefix}text_model.{key}": value
        for key, value in _flat(state).items()
        if not key.startswith("text_projection")
    }


def open_clip_to_original(state: dict, prefix: str) -> dict:
    out, qkv = {}, {}
    for key, value in _flat(state).items():
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()  # stored (hidden, projection)
            continue
        if key in OPEN_CLIP_TOP:
            out[prefix + OPEN_CLIP_TOP[key]] = value
            continue
        p = key.split(".")  # encoder.layers.N.<sub>
        base, sub = f"{prefix}transformer.resblocks.{p[2]}.", ".".join(p[3:])
        if sub.startswith("self_attn.") and p[4] in ("q_proj", "k_proj", "v_proj"):
            qkv.setdefault((base, p[-1]), {})[p[4][0]] = value
            continue
        for ours, theirs in (("self_attn.", "attn."), ("layer_norm1", "ln_1"),
                             ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                             ("mlp.fc2", "mlp.c_proj")):
            sub = sub.replace(ours, theirs)
        out[base + sub] = value
    for (base, kind), parts in qkv.items():
        out[f"{base}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def pipeline_to_original(pipe, family: str) -> dict:
    """The pipeline's UNet, VAE and text encoders as one original-layout state dict."""
    state = unet_to_original(pipe.unet.state_dict(), pipe.unet.config)
    state.update(vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
    text = pipe.text_encoder.state_dict()
    if family == "sd1":
        state.update(clip_to_original(text, "cond_stage_model.transformer."))
    elif family == "sd2":
        state.update(open_clip_to_original(text, "cond_stage_model.model."))
    else:
        state.update(clip_to_original(text, "conditioner.embedders.0.transformer."))
        state.update(open_clip_to_original(
            pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."
        ))
    return {key: value.contiguous() for key, value in state.items()}
