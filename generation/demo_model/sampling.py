"""Generating and scoring batches of demo-model images, shared by training and evaluation."""

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from . import dataset, scoring


def generate(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    seed: int,
    guidance: float,
    steps: int = 20,
) -> np.ndarray:
    """One image per prompt as uint8 NxHxWx3; image i's noise comes from seed + i
    (docs/architecture.md §4)."""
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(len(prompts))]
    out = pipe(
        prompts,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generators,
        output_type="np",
    ).images
    return np.rint(out * 255).astype(np.uint8)


def probe_triples(count: int) -> list[dataset.Triple]:
    """A fixed, spread-out choice of triples: all held-out ones first, then seen ones."""
    seen = list(dataset.TRAIN_TRIPLES)
    step = len(seen) / max(1, count - len(dataset.HELD_OUT))
    picked = [seen[int(i * step)] for i in range(max(0, count - len(dataset.HELD_OUT)))]
    return (list(dataset.HELD_OUT) + picked)[:count]


@torch.no_grad()
def adherence(pipe: StableDiffusionPipeline, count: int, guidance: float, steps: int = 20) -> float:
    """Share of ``count`` probe prompts (one seed) whose image gets all three right."""
    triples = probe_triples(count)
    images = generate(pipe, [t.caption for t in triples], seed=0, guidance=guidance, steps=steps)
    return round(
        float(
            np.mean([scoring.score(i, t).all_three for i, t in zip(images, triples, strict=True)])
        ),
        3,
    )
