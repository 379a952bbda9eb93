"""Measures how well the demo model follows prompts, per guidance and per sampler.

Run it as ``python manage.py evaluate_demo_model [--json]``. Images are generated in batches
(one per seed) to keep a full run short on 2 CPU cores; seconds per image are measured apart,
one image at a time, because that is what a user waits for.
"""

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from tqdm import tqdm

from generation.engine import DEFAULT_GUIDANCE, make_scheduler

from . import WEIGHTS_DIR, dataset, scoring
from .sampling import generate, probe_triples

GUIDANCES = (1.0, 3.0, 5.0, 7.5)
SAMPLERS = ("DDIM", "Euler", "Euler a", "DPM++ 2M")
SAMPLER_STEPS = (10, 20, 50, 100)
DDPM_STEPS = 1000
SEEDS = (0, 100_000)


@dataclass
class Batch:
    """Images of every probe prompt for every seed, in seed-major order."""

    triples: list[dataset.Triple]
    images: list[np.ndarray]
    seconds: float

    def by_seed(self) -> list[np.ndarray]:
        n = len(self.triples)
        return [np.stack(self.images[i : i + n]) for i in range(0, len(self.images), n)]


def load_pipeline(path: Path = WEIGHTS_DIR) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def with_sampler(pipe: StableDiffusionPipeline, name: str) -> StableDiffusionPipeline:
    """The pipeline with the engine's scheduler for sampler ``name``, as Studio samples it."""
    # The seed only matters for the SDE samplers, which the evaluation does not use.
    scheduler = make_scheduler(name, dict(pipe.scheduler.config), seed=0)
    sampler_pipe = StableDiffusionPipeline(
        **{**pipe.components, "scheduler": scheduler}, requires_safety_checker=False
    )
    sampler_pipe.set_progress_bar_config(disable=True)
    return sampler_pipe


def run_batch(
    pipe: StableDiffusionPipeline, triples: list[dataset.Triple], guidance: float, steps: int
) -> Batch:
    prompts = [t.caption for t in triples]
    started = time.perf_counter()
    images = [
        image
        for seed in SEEDS
        for image in generate(pipe, prompts, seed=seed, guidance=guidance, steps=steps)
    ]
    return Batch(triples, images, time.perf_counter() - started)


def adherence(batch: Batch) -> dict[str, dict[str, float]]:
    """Colour, background, shape and all-three rates, for seen and held-out triples apart."""
    groups: dict[str, list[scoring.Score]] = {"seen": [], "held_out": []}
    triples = batch.triples * len(SEEDS)
    for image, triple in zip(batch.images, triples, strict=True):
        group = "held_out" if triple in dataset.HELD_OUT else "seen"
        groups[group].append(scoring.score(image, triple))
    return {
        group: {
            "images": len(scores),
            "colour": _rate(s.colour for s in scores),
            "background": _rate(s.background for s in scores),
            "shape": _rate(s.shape for s in scores),
            "all_three": _rate(s.all_three for s in scores),
        }
        for group, scores in groups.items()
    }


def _rate(flags) -> float:
    flags = list(flags)
    return round(sum(flags) / len(flags), 4) if flags else float("nan")


def diversity(batch: Batch) -> float:
    """Mean pairwise pixel distance (mean |difference|, 0-1) between seeds of one prompt."""
    per_seed = [images.astype(np.float64) / 255 for images in batch.by_seed()]
    pairs = [np.abs(a - b).mean() for i, a in enumerate(per_seed) for b in per_seed[i + 1 :]]
    return round(float(np.mean(pairs)), 4)


def seconds_per_image(
    pipe: StableDiffusionPipeline, guidance: float, steps: int, repeats: int
) -> float:
    """Median wall time of one 64x64 image, after one warm-up run."""
    prompt = [dataset.TRAIN_TRIPLES[0].caption]
    generate(pipe, prompt, seed=0, guidance=guidance, steps=min(steps, 5))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        generate(pipe, prompt, seed=0, guidance=guidance, steps=steps)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 3)


def guidance_sweep(pipe: StableDiffusionPipeline, triples: list[dataset.Triple]) -> dict:
    """DDIM at 20 steps for each guidance scale: adherence, diversity, and the images."""
    rows, images = [], {}
    for guidance in tqdm(GUIDANCES, desc="guidance"):
        batch = run_batch(pipe, triples, guidance, steps=20)
        rows.append(
            {
                "guidance": guidance,
                **adherence(batch),
                "diversity": diversity(batch),
                "batched_seconds_per_image": round(batch.seconds / len(batch.images), 4),
            }
        )
        images[guidance] = batch.images[: len(triples)]
    return {"rows": rows, "images": images}


def sampler_sweep(
    pipe: StableDiffusionPipeline, triples: list[dataset.Triple], guidance: float
) -> dict:
    """Each sampler at each step count, plus DDPM at 1000 steps: adherence and seconds/image."""
    runs = [(name, steps) for name in SAMPLERS for steps in SAMPLER_STEPS] + [("DDPM", DDPM_STEPS)]
    rows, images = [], {}
    for name, steps in tqdm(runs, desc="samplers"):
        sampler_pipe = with_sampler(pipe, name)
        batch = run_batch(sampler_pipe, triples, guidance, steps)
        repeats = 3 if steps <= 20 else 1
        rows.append(
            {
                "sampler": name,
                "steps": steps,
                **adherence(batch),
                "seconds_per_image": seconds_per_image(sampler_pipe, guidance, steps, repeats),
            }
        )
        images[(name, steps)] = batch.images[: len(triples)]
    return {"rows": rows, "images": images}


def speed(pipe: StableDiffusionPipeline) -> dict[str, float]:
    """The issue's speed targets: one image at 20 steps, guidance 1 and guidance above 1."""
    return {
        f"guidance_{g:g}": seconds_per_image(pipe, guidance=g, steps=20, repeats=5)
        for g in (1.0, 3.0, DEFAULT_GUIDANCE)
    }


def _tile(images: list[np.ndarray], columns: int, scale: int = 2, gap: int = 2) -> Image.Image:
    size = images[0].shape[0] * scale
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * (size + gap) - gap, rows * (size + gap) - gap), "white")
    for i, image in enumerate(images):
        tile = Image.fromarray(image).resize((size, size), Image.NEAREST)
        sheet.paste(tile, ((i % columns) * (size + gap), (i // columns) * (size + gap)))
    return sheet


def save_grids(guidance: dict, samplers: dict, triples: list[dataset.Triple], out: Path) -> None:
    """prompts x guidance, and sampler x steps (three prompts per cell), as PNGs in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    shown = list(range(0, len(triples), max(1, len(triples) // 8)))[:8]
    cells = [guidance["images"][g][i] for i in shown for g in GUIDANCES]
    _tile(cells, columns=len(GUIDANCES)).save(out / "demo_guidance_grid.png")
    picked = shown[:3]
    strips = []
    for name in [*SAMPLERS, "DDPM"]:
        for steps in SAMPLER_STEPS if name != "DDPM" else (DDPM_STEPS,):
            strips.extend(samplers["images"][(name, steps)][i] for i in picked)
        if name == "DDPM":
            strips.extend([np.full_like(strips[0], 255)] * len(picked) * (len(SAMPLER_STEPS) - 1))
    _tile(strips, columns=len(SAMPLER_STEPS) * len(picked)).save(out / "demo_sampler_grid.png")


def evaluate(path: Path = WEIGHTS_DIR, prompts: int = 48, grids: Path | None = None) -> dict:
    """Run the whole evaluation; returns the figures as a JSON-ready dict.

    1. Guidance sweep with the saved (default) sampler at 20 steps.
    2. Sampler x steps sweep at the model's default guidance.
    3. Single-image speed at 20 steps.
    """
    torch.set_num_threads(2)
    started = time.perf_counter()
    pipe = load_pipeline(path)
    triples = probe_triples(prompts)
    guidance = guidance_sweep(pipe, triples)
    samplers = sampler_sweep(pipe, triples, DEFAULT_GUIDANCE)
    if grids is not None:
        save_grids(guidance, samplers, triples, grids)
    return {
        "model": str(path),
        "prompts": len(triples),
        "held_out_prompts": sum(t in dataset.HELD_OUT for t in triples),
        "seeds": list(SEEDS),
        "default_guidance": DEFAULT_GUIDANCE,
        "guidance": guidance["rows"],
        "samplers": samplers["rows"],
        "speed": speed(pipe),
        "threads": torch.get_num_threads(),
        "minutes": round((time.perf_counter() - started) / 60, 2),
    }


def to_markdown(result: dict) -> str:
    """The figures as the two tables in docs/demo_model.md."""
    lines = [
        "| guidance | all three, seen | all three, held-out | colour | background | shape "
        "| diversity |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["guidance"]:
        seen, held = row["seen"], row["held_out"]
        lines.append(
            f"| {row['guidance']:g} | {seen['all_three']:.0%} | {held['all_three']:.0%} "
            f"| {seen['colour']:.0%} / {held['colour']:.0%} "
            f"| {seen['background']:.0%} / {held['background']:.0%} "
            f"| {seen['shape']:.0%} / {held['shape']:.0%} | {row['diversity']:.3f} |"
        )
    lines += [
        "",
        "| sampler | steps | all three, seen | all three, held-out | seconds / image |",
        "|---|---|---|---|---|",
    ]
    for row in result["samplers"]:
        lines.append(
            f"| {row['sampler']} | {row['steps']} | {row['seen']['all_three']:.0%} "
            f"| {row['held_out']['all_three']:.0%} | {row['seconds_per_image']:.2f} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--model", type=Path, default=WEIGHTS_DIR, help="diffusers directory")
    parser.add_argument("--prompts", type=int, default=48, help="probe prompts (>= 17)")
    parser.add_argument("--grids", type=Path, default=None, help="write grid PNGs here")


def main(options: dict) -> str:
    result = evaluate(options["model"], options["prompts"], options["grids"])
    return json.dumps(result) if options["json"] else to_markdown(result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    print(main(vars(parser.parse_args())))
