"""What the engine costs on top of the bare diffusers call, with and without step previews.

    HF_HUB_OFFLINE=1 .venv/bin/python tests/benchmarks/engine_overhead.py [--model DIR] [--runs 7]

One recipe (the default model, 64x64, 20 steps, batch 1) runs four ways in each round, in a
rotating order: a stock StableDiffusionPipeline given the recipe's scheduler config and
generator list; the engine without previews; the engine handing every step's preview to an
`on_step` that does not draw it (what a caller drawing elsewhere, like Studio's worker, costs
the loop); and the engine with every preview drawn by `on_step`, in this process, on the
sampling thread. Each round gives three ratios (engine / bare); the figures are their
medians over the rounds, after one warm-up round. The last line printed is the JSON object
{"ratio_no_previews": …, "ratio_previews_undrawn": …, "ratio_previews": …}.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from generation import engine  # noqa: E402
from generation.engine.samplers import scheduler_from_ref  # noqa: E402

DEMO_WEIGHTS = ROOT / "generation" / "demo_model" / "weights"
PROMPT = "a red circle on a blue background"


def bare_call(recipe: engine.Recipe, pipe: StableDiffusionPipeline) -> None:
    pipe.scheduler = scheduler_from_ref(recipe.scheduler)
    pipe(
        recipe.prompt,
        height=recipe.height,
        width=recipe.width,
        num_inference_steps=recipe.steps,
        guidance_scale=recipe.guidance_scale,
        generator=[torch.Generator("cpu").manual_seed(recipe.seed)],
    )


def draw(step: int, total: int, preview: engine.StepPreview, elapsed: float) -> None:
    preview.render()  # what a caller showing every preview does, between the steps


def engine_call(recipe: engine.Recipe, pipe: engine.StudioPipeline, on_step=None) -> None:
    if on_step is not None:
        engine.generate(recipe, pipeline=pipe, on_step=on_step, preview=engine.Previews())
    else:
        engine.generate(recipe, pipeline=pipe, preview=None)


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEMO_WEIGHTS))
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ref = engine.ModelRef(name="benchmark", source=args.model)
    recipe = engine.build_recipe(model=ref, prompt=PROMPT, width=64, height=64, steps=20, seed=1)
    ours = engine.load_pipeline(args.model, device="cpu", dtype=torch.float32)
    stock = StableDiffusionPipeline.from_pretrained(
        args.model, use_safetensors=True, safety_checker=None, requires_safety_checker=False
    )
    stock.set_progress_bar_config(disable=True)
    calls = {
        "bare": lambda: bare_call(recipe, stock),
        "no_previews": lambda: engine_call(recipe, ours),
        "previews_undrawn": lambda: engine_call(recipe, ours, on_step=lambda *_: None),
        "previews": lambda: engine_call(recipe, ours, on_step=draw),
    }
    ratios: dict[str, list[float]] = {"no_previews": [], "previews_undrawn": [], "previews": []}
    bare_times = []
    for round_ in range(args.runs + 1):
        order = list(calls)[round_ % len(calls) :] + list(calls)[: round_ % len(calls)]
        seconds = {name: timed(calls[name]) for name in order}
        if round_ == 0:
            continue  # warm-up: caches, the preview projection, allocator
        bare_times.append(seconds["bare"])
        for name in ratios:
            ratios[name].append(seconds[name] / seconds["bare"])

    result = {
        f"ratio_{name}": round(statistics.median(values), 4) for name, values in ratios.items()
    }
    print(
        f"model {args.model}, 64x64, 20 steps, guidance {recipe.guidance_scale:g}, batch 1, "
        f"{torch.get_num_threads()} threads, {args.runs} paired runs"
    )
    print(f"bare diffusers call: median {statistics.median(bare_times):.3f} s")
    print(f"engine without previews / bare: {result['ratio_no_previews']:.4f}")
    print(f"engine, previews handed over undrawn / bare: {result['ratio_previews_undrawn']:.4f}")
    print(f"engine, previews drawn in on_step / bare:    {result['ratio_previews']:.4f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
