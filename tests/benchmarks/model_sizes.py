"""What a full-size checkpoint costs: hashing it, reading its spec, loading it, a 512x512 step.

    HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python tests/benchmarks/model_sizes.py
        [--dtype fp16] [--steps 2] [--threads N] [--keep DIR] [--small]

1. Build a single-file checkpoint in the original layout: SD 1.5's architecture from the
   shipped configs (generation/engine/configs/sd1), each component with diffusers' and
   transformers' own random init, cast to fp16 (1.99 GiB), converted with
   tests/generation/checkpoint_files.py and written with safetensors. A child process builds
   it, so this process's peak memory is what loading and running cost.
2. Hash it (engine.weights_hash): first just after writing, with the file's pages where the
   write left them (the share in the page cache is reported); again with a new mtime (a cache
   miss) and its pages dropped from the page cache; then the cached call. sha256 over memory
   gives the hashing rate's ceiling on this CPU.
3. Read it as a web request does: engine.inspect_checkpoint (header and family) and
   engine.load_spec, first and cached.
4. Load it as Studio's CPU worker does (engine.load_pipeline, fp32); peak memory after it.
5. Run engine.generate at the model's native size (512x512), Euler, the default guidance
   (each step runs the UNet on a batch of two), no previews, at the thread count Studio's CPU
   worker takes: each step's time, the decode and the total.
6. ``--dtype fp16`` (or bf16) also loads it in that dtype, load time only: on the CPU Studio
   runs fp32.
7. On CUDA, if present: the load in the worker's dtype (engine.resolve_device) and the time a
   step takes, from two runs that differ by ``--gpu-steps`` steps (the GPU runs
   asynchronously, so the step callbacks' clock is not the steps').

``--small`` runs all of it on the tests' tiny SD 1.x model (tests/generation/conftest.py) at
its native size, so a test keeps the script working. The checkpoint goes to a temporary
folder removed at the end; ``--keep DIR`` writes it to DIR and leaves it there, and a later
run with the same DIR reuses it. The last line printed is the JSON object of every figure.
"""

import argparse
import ctypes
import gc
import hashlib
import json
import math
import mmap
import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from generation import engine  # noqa: E402

FULL_NAME = "sd15-random.safetensors"
SMALL_NAME = "tiny-sd1.safetensors"  # what tests/generation/conftest.save_family_model writes
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
SAMPLER = "Euler"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GIB = 1 << 30


def build(folder: Path, small: bool) -> None:
    """The child process: write the checkpoint into ``folder``, print its own cost as JSON."""
    started = time.perf_counter()
    if small:
        from tests.generation.conftest import save_family_model

        save_family_model("sd1", folder)
    else:
        build_full(folder / FULL_NAME)
    print(json.dumps({"seconds": time.perf_counter() - started, "memory": memory()}))


def build_full(path: Path) -> None:
    """SD 1.5's components from the shipped configs, random, in fp16, as one original-layout
    file. Each is cast as soon as it is built: the UNet in fp32 (3.4 GB) is the peak."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from generation.engine.families import CONFIGS
    from tests.generation.checkpoint_files import pipeline_to_original

    config = CONFIGS / "sd1"
    torch.manual_seed(0)
    parts = SimpleNamespace(
        unet=UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(config / "unet")
        ).half(),
        vae=AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae")).half(),
        text_encoder=CLIPTextModel(
            CLIPTextConfig.from_pretrained(config / "text_encoder")
        ).half(),
    )
    state = pipeline_to_original(parts, "sd1")
    del parts
    gc.collect()
    save_file(state, path)


def checkpoint(folder: Path, small: bool) -> tuple[Path, dict | None]:
    """The checkpoint in ``folder``, built by a child process unless it is there already."""
    path = folder / (SMALL_NAME if small else FULL_NAME)
    if path.is_file():
        return path, None
    command = [sys.executable, __file__, "--build-into", str(folder), *(["--small"] * small)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return path, json.loads(done.stdout.splitlines()[-1])


def memory() -> dict[str, int]:
    """This process's memory in bytes: its peak (getrusage's ru_maxrss and /proc's VmHWM) and
    what it holds now (VmRSS; RssAnon, its own; RssFile, mapped files' pages)."""
    figures = {"ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    names = {"VmHWM": "vm_hwm", "VmRSS": "vm_rss", "RssAnon": "rss_anon", "RssFile": "rss_file"}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in names:
            figures[names[name]] = int(value.split()[0]) * 1024  # kB
    return figures


def cached_share(path: Path) -> float | None:
    """The share of the file's pages in the page cache (mincore over a mapping of it that
    is never touched); None where the kernel does not say."""
    size, page = path.stat().st_size, mmap.PAGESIZE
    pages = (size + page - 1) // page
    resident = (ctypes.c_ubyte * pages)()
    libc = ctypes.CDLL(None, use_errno=True)
    # A private (copy-on-write) mapping is writable, so ctypes can take its address.
    with path.open("rb") as file, mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY) as m:
        view = (ctypes.c_char * size).from_buffer(m)
        failed = libc.mincore(ctypes.c_void_p(ctypes.addressof(view)), ctypes.c_size_t(size),
                              resident)
        del view  # the mapping cannot close while ctypes holds it
    if failed:
        return None
    return sum(byte & 1 for byte in bytes(resident)) / pages


def drop_cache(path: Path) -> None:
    """A cache miss next time: a new mtime (weights_hash's key), the pages out of the page
    cache (a hint the kernel follows for clean pages, hence the fsync)."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(call, *args, **kwargs):
    started = time.perf_counter()
    value = call(*args, **kwargs)
    return value, time.perf_counter() - started


def hash_figures(path: Path, memory_bytes: int) -> dict:
    source = str(path)
    after_write = cached_share(path)
    digest, first = timed(engine.weights_hash, source)
    drop_cache(path)
    dropped = cached_share(path)
    again, cold = timed(engine.weights_hash, source)
    if again != digest:
        raise RuntimeError(f"{path.name} hashed to {digest} and then {again}")
    _, cached = timed(engine.weights_hash, source)
    # The file's loop (1 MiB reads) without the reads: one block, hashed over and over.
    block, sha, blocks = os.urandom(1 << 20), hashlib.sha256(), memory_bytes >> 20
    started = time.perf_counter()
    for _ in range(blocks):
        sha.update(block)
    in_memory = (blocks << 20) / (time.perf_counter() - started)
    size = path.stat().st_size
    return {
        "sha256": digest, "first_seconds": first, "first_page_cache_share": after_write,
        "cold_seconds": cold, "cold_page_cache_share": dropped, "cached_seconds": cached,
        "first_bytes_per_second": size / first, "cold_bytes_per_second": size / cold,
        "memory_bytes_per_second": in_memory,
    }


def spec_figures(path: Path) -> dict:
    source = str(path)
    found, inspect_seconds = timed(engine.inspect_checkpoint, source)
    spec, first = timed(engine.load_spec, source)
    _, cached = timed(engine.load_spec, source)
    return {
        "family": found.family.name, "evidence": found.evidence, "native_size": spec.native_size,
        "inspect_seconds": inspect_seconds, "load_spec_seconds": first,
        "load_spec_cached_seconds": cached,
    }


def run(pipe, path: Path, *, size: int, steps: int, threads: int | None):
    recipe = engine.build_recipe(
        model=engine.ModelRef(name=path.stem, source=str(path)), prompt=PROMPT,
        sampler=SAMPLER, steps=steps, width=size, height=size, seed=1,
    )
    return engine.generate(replace(recipe, threads=threads), pipeline=pipe, preview=None)


def load(path: Path, device: str, dtype: torch.dtype):
    started = time.perf_counter()
    pipe = engine.load_pipeline(str(path), device=device, dtype=dtype)
    if device == "cuda":
        torch.cuda.synchronize()  # the copies to the GPU are asynchronous
    return pipe, time.perf_counter() - started


def cpu_figures(path: Path, size: int, steps: int, threads: int) -> dict:
    # The engine's heavy modules import on first use (seconds on a busy machine): apart, so
    # the load time is the checkpoint's.
    _, imports = timed(lambda: (engine.load_pipeline, engine.generate))
    pipe, seconds = load(path, "cpu", torch.float32)
    after_load = memory()
    result = run(pipe, path, size=size, steps=steps, threads=threads)
    timings = result.timings
    return {
        "dtype": "float32", "threads": threads, "imports_seconds": imports,
        "load_seconds": seconds,
        "memory_after_load": after_load, "width": size, "height": size, "steps": steps,
        "sampler": SAMPLER, "guidance": engine.DEFAULT_GUIDANCE,
        "step_seconds": timings["steps"], "decode_seconds": timings["decode"],
        "total_seconds": timings["total"], "memory_after_generate": memory(),
    }


def extra_load_figures(path: Path, name: str) -> dict:
    _, seconds = load(path, "cpu", DTYPES[name])
    return {"dtype": str(DTYPES[name]).removeprefix("torch."), "load_seconds": seconds,
            "memory_after_load": memory()}


def gpu_figures(path: Path, size: int, steps: int) -> dict | None:
    if not torch.cuda.is_available():
        return None
    _, dtype = engine.resolve_device("cuda")
    pipe, load_seconds = load(path, "cuda", dtype)
    torch.cuda.reset_peak_memory_stats()
    run(pipe, path, size=size, steps=2, threads=None)  # warm-up: kernels chosen, memory pooled
    short = run(pipe, path, size=size, steps=2, threads=None).timings["total"]
    long = run(pipe, path, size=size, steps=2 + steps, threads=None).timings["total"]
    return {
        "device": torch.cuda.get_device_name(), "dtype": str(dtype).removeprefix("torch."),
        "load_seconds": load_seconds, "width": size, "height": size, "sampler": SAMPLER,
        "step_seconds": (long - short) / steps, "total_seconds_2_steps": short,
        "max_memory_allocated": torch.cuda.max_memory_allocated(),
    }


def file_figures(path: Path, build_cost: dict | None) -> dict:
    header = engine.read_header(path)
    params = sum(math.prod(tensor.shape) for tensor in header.tensors.values())
    return {"name": path.name, "bytes": path.stat().st_size, "tensors": len(header.tensors),
            "params": params, "build": build_cost}


@contextmanager
def checkpoint_folder(keep: str | None):
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    with tempfile.TemporaryDirectory(prefix="studio-model-sizes-") as folder:
        yield Path(folder)


def measure(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    # Figures from a shared machine are read against how busy it was.
    machine = {"cpus": os.cpu_count(), "load_average": os.getloadavg(),
               "torch": torch.__version__}
    with checkpoint_folder(args.keep) as folder:
        path, build_cost = checkpoint(folder, args.small)
        figures = {"mode": "small" if args.small else "full", "machine": machine,
                   "file": file_figures(path, build_cost),
                   "hash": hash_figures(path, (64 if args.small else 1024) << 20),
                   "spec": spec_figures(path)}
        size = figures["spec"]["native_size"]
        figures["cpu"] = cpu_figures(path, size, args.steps, args.threads)
        figures["extra_load"] = extra_load_figures(path, args.dtype) if args.dtype else None
        figures["gpu"] = gpu_figures(path, size, args.gpu_steps)
    figures["run_seconds"] = time.perf_counter() - started
    return figures


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f} GiB"


def _share(share: float | None) -> str:
    return "unknown" if share is None else f"{share:.0%} in the page cache"


def rows(f: dict) -> list[tuple[str, str]]:
    return [*_file_rows(f), *_run_rows(f), ("whole run", f"{f['run_seconds']:.1f} s")]


def _file_rows(f: dict) -> list[tuple[str, str]]:
    file, hashed, spec, machine = f["file"], f["hash"], f["spec"], f["machine"]
    build = file["build"]
    return [
        ("machine", f"{machine['cpus']} CPUs, load average "
                    f"{' '.join(f'{n:.2f}' for n in machine['load_average'])} at the start, "
                    f"torch {machine['torch']}"),
        ("checkpoint", f"{file['name']}: {_gib(file['bytes'])}, {file['tensors']} tensors, "
                       f"{file['params'] / 1e9:.3f} G parameters"),
        ("build (child process)", "reused (--keep)" if build is None else
         f"{build['seconds']:.1f} s, peak {_gib(build['memory']['vm_hwm'])}"),
        ("hash, first (after writing)", f"{hashed['first_seconds']:.2f} s, "
         f"{hashed['first_bytes_per_second'] / 1e6:.0f} MB/s, "
         f"{_share(hashed['first_page_cache_share'])}"),
        ("hash, pages dropped", f"{hashed['cold_seconds']:.2f} s, "
         f"{hashed['cold_bytes_per_second'] / 1e6:.0f} MB/s, "
         f"{_share(hashed['cold_page_cache_share'])}"),
        ("hash, cached (lru)", f"{hashed['cached_seconds'] * 1e6:.1f} us"),
        ("sha256 over memory", f"{hashed['memory_bytes_per_second'] / 1e6:.0f} MB/s"),
        ("family (inspect_checkpoint)", f"{spec['family']}: {spec['inspect_seconds'] * 1e3:.1f}"
         f" ms ({spec['evidence']})"),
        ("load_spec, first / cached", f"{spec['load_spec_seconds'] * 1e3:.1f} ms / "
         f"{spec['load_spec_cached_seconds'] * 1e6:.1f} us"),
    ]


def _run_rows(f: dict) -> list[tuple[str, str]]:
    cpu = f["cpu"]
    out = [
        ("imports (heavy engine modules)", f"{cpu['imports_seconds']:.2f} s"),
        ("load, cpu float32", f"{cpu['load_seconds']:.2f} s"),
    ]
    for when in ("after_load", "after_generate"):
        m = cpu[f"memory_{when}"]
        out.append((f"memory {when.replace('_', ' ')}",
                    f"peak {_gib(m['ru_maxrss'])} (ru_maxrss), {_gib(m['vm_hwm'])} (VmHWM); "
                    f"now {_gib(m['vm_rss'])} ({_gib(m['rss_anon'])} anon, "
                    f"{_gib(m['rss_file'])} file)"))
    steps = ", ".join(f"{s:.2f}" for s in cpu["step_seconds"])
    out.append((f"cpu {cpu['width']}x{cpu['height']} {cpu['sampler']}, {cpu['threads']} thread(s)",
                f"steps {steps} s; decode {cpu['decode_seconds']:.2f} s; "
                f"total {cpu['total_seconds']:.2f} s ({cpu['steps']} steps)"))
    if extra := f["extra_load"]:
        out.append((f"load, cpu {extra['dtype']}", f"{extra['load_seconds']:.2f} s; now "
                    f"{_gib(extra['memory_after_load']['vm_rss'])} resident"))
    if gpu := f["gpu"]:
        out.append((f"gpu {gpu['device']} {gpu['dtype']}",
                    f"load {gpu['load_seconds']:.2f} s; {gpu['step_seconds'] * 1e3:.1f} ms a "
                    f"step; 2 steps + decode {gpu['total_seconds_2_steps']:.2f} s; "
                    f"{_gib(gpu['max_memory_allocated'])} allocated at most"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", choices=("fp16", "bf16"),
                        help="also load the checkpoint in this dtype on the CPU (load only)")
    parser.add_argument("--steps", type=int, default=2, help="steps of the CPU run (default 2)")
    parser.add_argument("--gpu-steps", type=int, default=20,
                        help="the steps the two CUDA runs differ by (default 20)")
    # Studio's CPU worker takes every core but one (generation.registry.threads).
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) - 1),
                        help="torch threads of the CPU run (default: Studio's CPU worker's)")
    parser.add_argument("--keep", metavar="DIR", help="write the checkpoint here and keep it")
    parser.add_argument("--small", action="store_true", help="the tests' tiny SD 1.x model")
    parser.add_argument("--build-into", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.build_into:
        build(Path(args.build_into), args.small)
        return
    figures = measure(args)
    table = rows(figures)
    width = max(len(name) for name, _ in table)
    for name, value in table:
        print(f"{name:<{width}}  {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
