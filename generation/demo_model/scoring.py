"""Scores a generated image against its prompt's triple by looking at its pixels alone."""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .dataset import MAX_OFFSET, MAX_SPAN, PALETTE, Triple

_NAMES = tuple(PALETTE)
_RGB = np.array([PALETTE[name] for name in _NAMES], dtype=np.float64)

# A pixel belongs to the shape when it is farther than this from the background colour; the
# closest two palette colours (orange, yellow) are 81 apart, so 40 is about halfway.
FOREGROUND_DISTANCE = 40.0
BORDER = 2
# Generated images often have a faint ring along the image edge; the shapes never come closer
# to it than this, so the foreground is looked for inside it.
MARGIN = 4
assert MARGIN < 32 - MAX_SPAN / 2 - MAX_OFFSET
# Bounding-box fill ratios: triangle 0.5, circle pi/4 = 0.785, square 1; cut halfway between.
TRIANGLE_BELOW = 0.64
CIRCLE_BELOW = 0.89


@dataclass(frozen=True)
class Score:
    seen: Triple
    wanted: Triple

    @property
    def colour(self) -> bool:
        return self.seen.colour == self.wanted.colour

    @property
    def background(self) -> bool:
        return self.seen.background == self.wanted.background

    @property
    def shape(self) -> bool:
        return self.seen.shape == self.wanted.shape

    @property
    def all_three(self) -> bool:
        return self.colour and self.background and self.shape


def nearest_colour(rgb: np.ndarray) -> str:
    return _NAMES[int(np.argmin(((_RGB - rgb) ** 2).sum(axis=1)))]


def _border_pixels(image: np.ndarray) -> np.ndarray:
    top, bottom = image[:BORDER], image[-BORDER:]
    left, right = image[BORDER:-BORDER, :BORDER], image[BORDER:-BORDER, -BORDER:]
    return np.concatenate([p.reshape(-1, 3) for p in (top, bottom, left, right)])


def _foreground(distance: np.ndarray) -> np.ndarray:
    """The largest connected blob far from the background colour, holes filled.

    Keeping one blob stops stray speckles of a generated image from stretching the bounding box.
    """
    mask = np.zeros_like(distance, dtype=bool)
    inner = (slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN))
    mask[inner] = distance[inner] > FOREGROUND_DISTANCE
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    largest = 1 + int(np.argmax(ndimage.sum(mask, labels, range(1, count + 1))))
    return ndimage.binary_fill_holes(labels == largest)


def _shape_name(mask: np.ndarray) -> str:
    """Classify the foreground mask by how much of its bounding box it fills."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    fill = mask.sum() / box
    if fill < TRIANGLE_BELOW:
        return "triangle"
    return "circle" if fill < CIRCLE_BELOW else "square"


def read_triple(image: np.ndarray) -> Triple:
    """What the image shows: border colour, colour of the pixels unlike it, and shape.

    1. The background is the palette colour nearest the median border pixel.
    2. Foreground pixels are the largest blob of pixels far from that palette colour; their
       median names the shape colour ("none" when there are none).
    3. The shape comes from the foreground's bounding-box fill ratio.
    """
    pixels = image.astype(np.float64)
    background = nearest_colour(np.median(_border_pixels(pixels), axis=0))
    distance = np.sqrt(((pixels - _RGB[_NAMES.index(background)]) ** 2).sum(axis=-1))
    mask = _foreground(distance)
    if not mask.any():
        return Triple("none", "none", background)
    colour = nearest_colour(np.median(pixels[mask], axis=0))
    return Triple(colour, _shape_name(mask), background)


def score(image: np.ndarray, wanted: Triple) -> Score:
    return Score(seen=read_triple(image), wanted=wanted)
