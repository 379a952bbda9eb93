"""The maths behind the /learn/ page: a model's noise schedule from its scheduler config, the
textbook linear and cosine schedules beside it, and the demo model's measured tables.

Plain numpy, so the web process computes it without torch or diffusers
(docs/architecture.md §1). The betas follow diffusers' own constructors (DDPMScheduler,
DDIMScheduler and the others share them) in float64; diffusers works in float32, so the two
agree to about 1e-6 (tests/generation/test_learn.py compares them).
"""

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

# "Below 10% noise": the noise's share of x_t's variance, 1 − ᾱ_t, is under this.
NOISE_LEVEL = 0.1
# The samplers, step counts and guidance scales the page's picture grids run.
GRID_SAMPLERS = ("DDIM", "Euler a", "DPM++ 2M")
GRID_STEPS = (10, 20, 50)
GRID_GUIDANCE = (1.0, 3.0, 5.0, 7.5)
# diffusers caps each cosine beta so that no step destroys all signal at once.
MAX_BETA = 0.999
# The forward-process panel: the strip's pictures, and the slider's frames, evenly spaced over
# t = 0 … T − 1. The slider's count less one is a multiple of the strip's, so every strip
# picture is one of the slider's frames and is computed once.
FORWARD_STRIP = 10
FORWARD_FRAMES = 46


@dataclass(frozen=True)
class Schedule:
    """ᾱ_t for t = 0 … T−1, under a name the page shows."""

    name: str
    alpha_bar: np.ndarray

    @property
    def steps(self) -> int:
        return len(self.alpha_bar)

    @property
    def snr(self) -> np.ndarray:
        """ᾱ / (1 − ᾱ): infinite where ᾱ is 1, zero where it is 0."""
        with np.errstate(divide="ignore"):
            return self.alpha_bar / (1.0 - self.alpha_bar)

    @property
    def fraction_quiet(self) -> float:
        """The fraction of timesteps whose noise, 1 − ᾱ_t, is below NOISE_LEVEL."""
        return float(np.mean(~self._noisy))

    @property
    def quiet_until(self) -> int:
        """The first timestep whose noise reaches NOISE_LEVEL (T when none does)."""
        noisy = self._noisy
        return int(np.argmax(noisy)) if noisy.any() else self.steps

    @property
    def _noisy(self) -> np.ndarray:
        # A noise of exactly 10% (linear's t = 100) is not below it, whatever rounding says.
        return 1.0 - self.alpha_bar >= NOISE_LEVEL - 1e-12


def betas_from_config(config: dict[str, Any]) -> np.ndarray:
    """The β_t a diffusers scheduler builds from this config (``trained_betas`` first, then
    ``beta_schedule``), rescaled to zero terminal SNR where ``rescale_betas_zero_snr`` says.
    Raises ValueError for a schedule diffusers would refuse too."""
    steps = int(config.get("num_train_timesteps") or 1000)
    start = float(config.get("beta_start", 0.0001))
    end = float(config.get("beta_end", 0.02))
    kind = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], dtype=np.float64)
    elif kind == "linear":
        betas = np.linspace(start, end, steps)
    elif kind == "scaled_linear":  # Stable Diffusion's
        betas = np.linspace(math.sqrt(start), math.sqrt(end), steps) ** 2
    elif kind == "squaredcos_cap_v2":  # Nichol and Dhariwal's cosine, offset 0.008
        betas = _betas_for_alpha_bar(steps)
    elif kind == "sigmoid":
        betas = 1 / (1 + np.exp(-np.linspace(-6, 6, steps))) * (end - start) + start
    else:
        raise ValueError(f"unknown beta_schedule {kind!r}")
    if config.get("rescale_betas_zero_snr"):
        betas = rescale_zero_terminal_snr(betas)
    return betas


def _betas_for_alpha_bar(steps: int) -> np.ndarray:
    def f(t: np.ndarray) -> np.ndarray:
        return np.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    t = np.arange(steps, dtype=np.float64)
    return np.minimum(1 - f((t + 1) / steps) / f(t / steps), MAX_BETA)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. (2024), Algorithm 1, as diffusers applies it: shift and scale √ᾱ so that
    its last value is 0 (pure noise at t = T−1) and its first is unchanged."""
    root = np.sqrt(np.cumprod(1.0 - betas))
    first, last = root[0], root[-1]
    root = (root - last) * first / (first - last)
    alpha_bar = root**2
    alphas = np.concatenate([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def model_schedule(name: str, config: dict[str, Any]) -> Schedule:
    return Schedule(name, np.cumprod(1.0 - betas_from_config(config)))


def linear_schedule(steps: int) -> Schedule:
    """The textbook linear ramp, ᾱ_t = 1 − t/T."""
    return Schedule("linear", 1.0 - np.arange(steps) / steps)


def cosine_schedule(steps: int) -> Schedule:
    """The textbook cosine, ᾱ_t = cos²(t/T · π/2)."""
    return Schedule("cosine", np.cos(np.arange(steps) / steps * math.pi / 2) ** 2)


def schedules_for(name: str, config: dict[str, Any]) -> list[Schedule]:
    """The model's schedule first, then the linear and cosine ones over as many steps."""
    own = model_schedule(name, config)
    return [own, linear_schedule(own.steps), cosine_schedule(own.steps)]


def forward_timesteps(steps: int) -> tuple[list[int], list[int]]:
    """The timesteps the forward-process panel computes for a schedule of ``steps`` (T):
    the slider's, evenly spaced from 0 to T − 1, and the positions among them of the
    strip's ten, evenly spaced too. A short schedule has fewer frames, none twice."""
    def spaced(count: int) -> list[int]:
        return sorted({round(k * (steps - 1) / (count - 1)) for k in range(count)})

    frames = spaced(FORWARD_FRAMES)
    return frames, [frames.index(t) for t in spaced(FORWARD_STRIP)]


# --- The demo model's measured tables ----------------------------------------------------


def _percent(value: float) -> str:
    return f"{round(100 * value)}%"


@lru_cache(maxsize=4)
def demo_tables(path: Path) -> dict[str, list[dict[str, str]]] | None:
    """The guidance and sampler rows of docs/demo_model_eval.json (the `evaluate_demo_model
    --json` output that docs/demo_model.md shows), limited to what the page's grids run;
    None where the file is missing (an install without docs)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    guidance = [
        {"guidance": f"{row['guidance']:g}", "seen": _percent(row["seen"]["all_three"]),
         "held_out": _percent(row["held_out"]["all_three"]),
         "diversity": f"{row['diversity']:.3f}"}
        for row in data.get("guidance", [])
    ]
    samplers = [
        {"sampler": row["sampler"], "steps": str(row["steps"]),
         "seen": _percent(row["seen"]["all_three"]),
         "held_out": _percent(row["held_out"]["all_three"]),
         "seconds": f"{row['seconds_per_image']:.2f}"}
        for row in data.get("samplers", [])
        if row["sampler"] in GRID_SAMPLERS and row["steps"] in GRID_STEPS
    ]
    return {"guidance": guidance, "samplers": samplers}
