"""The /learn/ page's schedule charts as SVG geometry, drawn by the server: no charting
library, no script needed to see them (templates/generation/learn.html draws the shapes).

Each chart has one polyline per schedule, a band marking the timesteps below 10% noise, and
a row of hover bands whose <title> gives every schedule's values at that t (learn.js also
shows it under the chart, for touch screens).
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .learn import Schedule

WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 52, 14, 14, 34  # margins for the axes' labels
POINTS = 250  # per polyline: enough for a smooth curve, a few kilobytes of SVG
BANDS = 50  # hover targets across the chart
# log10 SNR is shown within these bounds at most: ᾱ of exactly 1 or 0 is infinitely far.
LOG_SNR_LIMITS = (-10, 8)
SERIES_CLASSES = ("s-model", "s-linear", "s-cosine")


@dataclass(frozen=True)
class Tick:
    x: float  # where its label is anchored
    y: float  # its value's height (a grid line there); the label sits 4 below
    label: str
    power: str = ""  # an exponent shown raised after the label (10 and a power)

    @property
    def label_y(self) -> float:
        return self.y + 4


def _x(t: float, steps: int) -> float:
    return LEFT + (WIDTH - LEFT - RIGHT) * t / steps


def _y(value: float, low: float, high: float) -> float:
    value = min(max(value, low), high)
    return TOP + (HEIGHT - TOP - BOTTOM) * (high - value) / (high - low)


def _sampled(steps: int, count: int) -> np.ndarray:
    return np.unique(np.linspace(0, steps - 1, count).round().astype(int))


def fmt(value: float) -> str:
    """A value for a hover label: three significant figures, powers of ten when tiny."""
    if not math.isfinite(value):
        return "∞" if value > 0 else "−∞"
    if value == 0:
        return "0"
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"


def _log_snr(schedule: Schedule) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log10(schedule.snr)


def chart(
    schedules: Sequence[Schedule], values: Callable[[Schedule], np.ndarray],
    low: float, high: float, y_ticks: list[Tick], label: str,
) -> dict:
    """One chart's geometry: axes, ticks, polylines, the quiet band and hover bands."""
    steps = schedules[0].steps
    at = _sampled(steps, POINTS)
    lines = []
    for schedule, css in zip(schedules, SERIES_CLASSES, strict=False):
        ys = values(schedule)
        points = " ".join(f"{_x(t, steps):.1f},{_y(float(ys[t]), low, high):.1f}"
                          for t in at if not math.isnan(ys[t]))
        lines.append({"name": schedule.name, "css": css, "points": points})
    quiet = _quiet_marks(schedules)
    return {
        "label": label, "width": WIDTH, "height": HEIGHT,
        "plot": {"left": LEFT, "top": TOP, "right": WIDTH - RIGHT, "bottom": HEIGHT - BOTTOM,
                 "height": HEIGHT - TOP - BOTTOM},
        "quiet_width": quiet[0]["x"] - LEFT,
        "x_ticks": [Tick(_x(t, steps), HEIGHT - BOTTOM + 14, str(t))
                    for t in _nice_steps(steps)],
        "y_ticks": y_ticks, "lines": lines,
        "quiet": quiet,
        "bands": _hover_bands(schedules),
    }


def _nice_steps(steps: int) -> list[int]:
    return [round(steps * k / 4) for k in range(5)]


def _quiet_marks(schedules: Sequence[Schedule]) -> list[dict]:
    """Where each schedule's noise first reaches NOISE_LEVEL: the timesteps before it are
    "below 10% noise" (the model's shaded, the others' marked with a line)."""
    marks = []
    for schedule, css in zip(schedules, SERIES_CLASSES, strict=False):
        quiet = schedule.quiet_until
        marks.append({"name": schedule.name, "css": css, "x": _x(quiet, schedule.steps), "t": quiet,
                      "percent": f"{100 * schedule.fraction_quiet:.1f}"})
    return marks


def _hover_bands(schedules: Sequence[Schedule]) -> list[dict]:
    steps = schedules[0].steps
    width = (WIDTH - LEFT - RIGHT) / BANDS
    bands = []
    for k in range(BANDS):
        t = min(steps - 1, round((k + 0.5) * steps / BANDS))
        values = "; ".join(
            f"{s.name}: ᾱ {fmt(float(s.alpha_bar[t]))}, SNR {fmt(float(s.snr[t]))}"
            for s in schedules
        )
        bands.append({"x": LEFT + k * width, "width": width, "title": f"t = {t} · {values}"})
    return bands


def alpha_bar_chart(schedules: Sequence[Schedule]) -> dict:
    ticks = [Tick(LEFT - 8, _y(v, 0, 1), f"{v:g}") for v in (0, 0.25, 0.5, 0.75, 1)]
    return chart(schedules, lambda s: s.alpha_bar, 0.0, 1.0, ticks, "ᾱ_t")


def snr_chart(schedules: Sequence[Schedule]) -> dict:
    """log10 SNR, its range fitted to the model's own schedule (within LOG_SNR_LIMITS and
    at least ±3), the textbook schedules clipped to it."""
    own = _log_snr(schedules[0])
    finite = own[np.isfinite(own)]
    low = max(LOG_SNR_LIMITS[0], min(-3, math.floor(finite.min())))
    high = min(LOG_SNR_LIMITS[1], max(3, math.ceil(finite.max())))
    every = 1 if high - low <= 8 else 2
    ticks = [Tick(LEFT - 8, _y(p, low, high), "10", str(p))
             for p in range(low, high + 1) if p % every == 0]
    return chart(schedules, _log_snr, float(low), float(high), ticks, "SNR (log scale)")
