"""GPU throughput: stock diffusers against Studio's worker path with its fast path, on
full-size SD 1.5- and SDXL-architecture models with random weights (nothing downloaded).

    HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python tests/benchmarks/gpu_throughput.py
        [--models sd1,sdxl] [--repeats 3] [--compile reduce-overhead,default]
        [--no-channels-last] [--no-fused-qkv] [--peak-tflops N] [--small]

For each model (SD 1.5 at 512x512, SDXL at 1024x1024; 20 steps, DDIM, guidance 3, one image):

1. Build its components from the shipped configs (generation/engine/configs/<family>) with
   diffusers' and transformers' own random init, on the device, and the shipped tokenizers.
2. ``stock``: the stock StableDiffusion(XL)Pipeline in fp16, eager, given the same scheduler
   and CPU generator the engine uses (fp32 on the CPU, where Studio runs fp32).
3. Count the UNet's FLOPs for one step (its batch of two, with guidance) once, with
   ``torch.utils.flop_counter.FlopCounterMode``.
4. ``studio_eager``: ``engine.generate`` (previews handed to ``on_step`` each step, as the
   worker hands them to its sidecar) in the worker's dtype (``engine.resolve_device``: bf16
   where the card has it), without the fast path.
5. ``studio``: the same modules prepared as a worker loads them with the fast path
   (``fast_pipeline.prepare``: channels-last, fused QKV, ``torch.compile`` of the UNet and
   VAE decoder in the first ``--compile`` mode that works), warmed up as a worker does at
   its start (``engine.warm_up``, timed), then timed.

Each variant: one untimed run, then ``--repeats`` timed runs (the median is reported):
seconds per image (synchronized), UNet iterations per second (from the step callbacks, the
device synchronized at the first and last step), peak GPU memory, and model FLOP
utilisation: UNet FLOPs per step x iterations per second over the card's dense bf16 peak
(``PEAK_TFLOPS`` by device name, or ``--peak-tflops``). Each variant's image is compared with
stock's (identical / within one level / differs): only the same dtype can be identical.

``--small`` runs the tests' tiny SD 1.x and SDXL models (tests/generation/conftest.py) at
their native size on the CPU in seconds (4 steps, 1 repeat), compiling only when
``--compile`` says (about two minutes a model on two cores). A line of
JSON is printed as each model finishes (so a run cut short keeps what it measured); the last
line is the JSON of every figure.
"""

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from generation import engine  # noqa: E402
from generation.engine import fast_pipeline  # noqa: E402
from generation.engine.families import CONFIGS  # noqa: E402
from generation.engine.samplers import make_scheduler, scheduler_class  # noqa: E402
from generation.engine.specs import config_tokenizer  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
SAMPLER, GUIDANCE, STEPS, SEED = "DDIM", 3.0, 20, 1
FULL_SIZE = {"sd1": 512, "sdxl": 1024}
# Dense bf16 tensor TFLOPS by the name CUDA reports (the first match wins).
PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
               ("A100", 312.0), ("L40S", 362.0))
STOCK = {"sd1": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}
STUDIO = {"sd1": engine.StudioPipeline, "sdxl": engine.StudioXLPipeline}


def full_components(family: str, device: torch.device) -> dict:
    """The family's components from the shipped configs, random, built on ``device``."""
    folder = CONFIGS / family
    torch.manual_seed(0)
    with torch.device(device):
        parts = {
            "unet": UNet2DConditionModel.from_config(
                UNet2DConditionModel.load_config(folder / "unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
            "text_encoder": CLIPTextModel(
                CLIPTextConfig.from_pretrained(folder / "text_encoder")),
            "tokenizer": config_tokenizer(folder, "tokenizer"),
        }
        if family == "sdxl":
            parts["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
            parts["tokenizer_2"] = config_tokenizer(folder, "tokenizer_2")
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    parts["scheduler"] = scheduler_class(config["_class_name"]).from_config(config)
    return parts | _extras(family)


def small_components(family: str) -> dict:
    from tests.generation.conftest import family_components

    return family_components(family)


def _extras(family: str) -> dict:
    if family == "sdxl":
        return {"image_encoder": None, "feature_extractor": None, "add_watermarker": False}
    return {"safety_checker": None, "feature_extractor": None, "image_encoder": None,
            "requires_safety_checker": False}


def pipeline(cls, parts: dict, device: torch.device, dtype: torch.dtype):
    pipe = cls(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


class StepClock:
    """UNet iterations per second from the step callbacks: the device is synchronized at
    the first step and the last, so the interval holds the steps between them."""

    def __init__(self, device: torch.device):
        self.device, self.marks = device, []

    def mark(self, step: int, total: int) -> None:
        if step in (1, total):
            sync(self.device)
            self.marks.append(time.perf_counter())

    def rate(self, total: int) -> float:
        return (total - 1) / (self.marks[1] - self.marks[0])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stock_run(pipe, recipe: engine.Recipe, clock: StepClock):
    pipe.scheduler = make_scheduler(SAMPLER, pipe.scheduler.config, recipe.seed)

    def on_step_end(_pipe, index, _timestep, tensors):
        clock.mark(index + 1, recipe.steps)
        return tensors

    return pipe(PROMPT, height=recipe.height, width=recipe.width,
                num_inference_steps=recipe.steps, guidance_scale=recipe.guidance_scale,
                generator=[torch.Generator("cpu").manual_seed(recipe.seed)],
                callback_on_step_end=on_step_end).images[0]


def studio_run(pipe, recipe: engine.Recipe, clock: StepClock):
    def on_step(step, total, _preview, _elapsed):
        clock.mark(step, total)

    return engine.generate(recipe, pipeline=pipe, on_step=on_step,
                           hashes=lambda _source: "").images[0]


def measure(run, pipe, recipe: engine.Recipe, device: torch.device, repeats: int) -> dict:
    """One untimed run, then ``repeats`` timed ones: medians, peak memory, the image."""
    run(pipe, recipe, StepClock(device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, rates = [], []
    for _ in range(repeats):
        clock = StepClock(device)
        sync(device)
        started = time.perf_counter()
        image = run(pipe, recipe, clock)
        sync(device)
        seconds.append(time.perf_counter() - started)
        rates.append(clock.rate(recipe.steps))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"seconds_per_image": statistics.median(seconds), "seconds": seconds,
            "unet_its_per_second": statistics.median(rates), "peak_memory_bytes": peak,
            "image": image}


def unet_flops(pipe, recipe: engine.Recipe, device: torch.device) -> int:
    """FLOPs of one UNet call as a step makes it (a batch of two, with guidance), counted
    on the arguments a one-step stock run passes it."""
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda _module, args, kwargs: seen.append((args, kwargs)) if not seen else None,
        with_kwargs=True)
    try:
        stock_run(pipe, replace(recipe, steps=2), StepClock(device))
    finally:
        hook.remove()
    args, kwargs = seen[0]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        pipe.unet(*args, **kwargs)
    return counter.get_total_flops()


def peak_tflops(device: torch.device, given: float | None) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", given
    name = torch.cuda.get_device_name(device)
    known = next((peak for key, peak in PEAK_TFLOPS if key in name), None)
    return name, given or known


def prepared_studio(parts: dict, family: str, device: torch.device, dtype: torch.dtype,
                    fast_path: engine.FastPath):
    pipe = pipeline(STUDIO[family], parts, device, dtype)
    fast_pipeline.prepare(pipe, fast_path, device=device)
    return pipe


def studio_fast(parts, family, device, dtype, args, recipe) -> dict:
    """The fast path in the first compile mode that works; each failure is kept."""
    failures = {}
    for mode in args.compile:
        fast_path = engine.FastPath(compile=mode, channels_last=args.channels_last,
                                    fused_qkv=args.fused_qkv)
        try:
            pipe = prepared_studio(parts, family, device, dtype, fast_path)
            warm = engine.warm_up(pipe)
            figures = measure(studio_run, pipe, recipe, device, args.repeats)
            return figures | {"warm_up_seconds": warm, "failed_modes": failures,
                              "fast_path": fast_path.to_json(),
                              "attention": sorted(fast_pipeline.attention_processors(pipe))}
        except Exception as exc:  # a mode that fails here is reported, and the next tried
            failures[mode] = f"{type(exc).__name__}: {exc}"[:500]
            torch._dynamo.reset()
    raise RuntimeError(f"every compile mode failed: {failures}")


def model_figures(family: str, args, device: torch.device) -> dict:
    """Steps 1-5 of the module's docstring for one model."""
    size = args.size or (None if args.small else FULL_SIZE[family])
    started = time.perf_counter()
    parts = small_components(family) if args.small else full_components(family, device)
    stock_dtype = torch.float16 if device.type == "cuda" else torch.float32
    stock = pipeline(STOCK[family], parts, device, stock_dtype)
    size = size or _native_size(stock)
    recipe = engine.Recipe(prompt=PROMPT, model=engine.ModelRef(name=f"random-{family}",
                                                                source=""),
                           sampler=SAMPLER, steps=args.steps, guidance_scale=GUIDANCE,
                           seed=SEED, width=size, height=size)
    built = time.perf_counter() - started
    figures = {"family": family, "width": size, "height": size, "steps": args.steps,
               "build_seconds": built, "params": _params(parts)}
    figures["stock"] = measure(stock_run, stock, recipe, device, args.repeats)
    figures["stock"]["dtype"] = str(stock_dtype).removeprefix("torch.")
    figures["unet_flops_per_step"] = unet_flops(stock, recipe, device)
    del stock
    worker_dtype = engine.resolve_device(device.type)[1]
    eager = prepared_studio(parts, family, device, worker_dtype, engine.FastPath())
    figures["studio_eager"] = measure(studio_run, eager, recipe, device, args.repeats)
    del eager
    figures["studio"] = studio_fast(parts, family, device, worker_dtype, args, recipe)
    for name in ("studio_eager", "studio"):
        figures[name]["dtype"] = str(worker_dtype).removeprefix("torch.")
    return _finished(figures, args.peak)


def _finished(figures: dict, peak: float | None) -> dict:
    """Ratios, FLOP utilisation and image comparisons; the images themselves dropped."""
    stock = figures["stock"]
    for name in ("stock", "studio_eager", "studio"):
        variant = figures[name]
        variant["match_stock"] = engine.compare_images(stock["image"], variant["image"]).verdict
        variant["speedup"] = stock["seconds_per_image"] / variant["seconds_per_image"]
        tflops = figures["unet_flops_per_step"] * variant["unet_its_per_second"] / 1e12
        variant["unet_tflops"] = tflops
        variant["mfu"] = tflops / peak if peak else None
    for name in ("stock", "studio_eager", "studio"):
        figures[name].pop("image")
    return figures


def _native_size(pipe) -> int:
    sample = pipe.unet.config.sample_size
    return (sample if isinstance(sample, int) else min(sample)) * pipe.vae_scale_factor


def _params(parts: dict) -> int:
    return sum(p.numel() for part in parts.values() if isinstance(part, torch.nn.Module)
               for p in part.parameters())


def table(report: dict) -> str:
    lines = [f"{report['device']}, bf16 peak {report['peak_tflops']} TFLOPS, "
             f"torch {report['torch']}, diffusers {report['diffusers']}",
             f"{'model':<6} {'variant':<13} {'dtype':<9} {'s/image':>8} {'it/s':>7} "
             f"{'speedup':>7} {'peak GiB':>8} {'TFLOPS':>7} {'MFU':>6}  image vs stock"]
    for family, figures in report["models"].items():
        if "error" in figures:
            lines.append(f"{family:<6} error: {figures['error']}")
            continue
        for name in ("stock", "studio_eager", "studio"):
            v = figures[name]
            peak = v["peak_memory_bytes"]
            memory = "" if peak is None else f"{peak / 2**30:.2f}"
            mfu = "" if v["mfu"] is None else f"{v['mfu']:.1%}"
            lines.append(f"{family:<6} {name:<13} {v['dtype']:<9} {v['seconds_per_image']:>8.3f} "
                         f"{v['unet_its_per_second']:>7.2f} {v['speedup']:>6.2f}x {memory:>8} "
                         f"{v['unet_tflops']:>7.2f} {mfu:>6}  {v['match_stock']}")
        studio = figures["studio"]
        lines.append(f"{'':<6} fast path {studio['fast_path']}, warm-up "
                     f"{studio['warm_up_seconds']:.1f} s, failed modes {studio['failed_modes']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="sd1,sdxl", help="families, in order (sd1,sdxl)")
    parser.add_argument("--repeats", type=int, help="timed runs a variant (3; --small: 1)")
    parser.add_argument("--steps", type=int, help=f"steps (default {STEPS}; --small: 4)")
    parser.add_argument("--size", type=int, help="width and height (default: 512 / 1024)")
    parser.add_argument("--compile", default=None,
                        help="compile modes to try in order (default: reduce-overhead,default "
                             "on CUDA; off with --small)")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--no-fused-qkv", dest="fused_qkv", action="store_false")
    parser.add_argument("--peak-tflops", dest="peak", type=float)
    parser.add_argument("--small", action="store_true", help="tiny models on the CPU")
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.small else 3)
    args.steps = args.steps or (4 if args.small else STEPS)
    device = torch.device("cpu" if args.small or not torch.cuda.is_available() else "cuda")
    default_modes = "off" if args.small or device.type != "cuda" else "reduce-overhead,default"
    args.compile = (args.compile or default_modes).split(",")
    name, args.peak = peak_tflops(device, args.peak)
    if device.type == "cpu":
        torch.set_num_threads(1)
    report = {"mode": "small" if args.small else "full", "device": name,
              "peak_tflops": args.peak, "torch": torch.__version__,
              "diffusers": engine.Versions.current().diffusers, "models": {}}
    started = time.perf_counter()
    for family in args.models.split(","):
        try:
            report["models"][family] = model_figures(family, args, device)
        except Exception as exc:  # the other model still runs
            report["models"][family] = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(json.dumps({"model": family, **report["models"][family]}), flush=True)
    report["run_seconds"] = time.perf_counter() - started
    print(table(report))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
