"""Pictures of maps: a heatmap over the photo, and several maps side by side."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from cmap import Colormap
from PIL import Image, ImageDraw

DEFAULT_COLORMAP = "inferno"  # perceptually uniform, readable in grey and by colour-blind readers


@lru_cache(maxsize=8)
def _lut(name: str) -> np.ndarray:
    return (Colormap(name).lut(256)[:, :3] * 255).round().astype(np.uint8)


def colorize(heatmap: np.ndarray, colormap: str = DEFAULT_COLORMAP) -> Image.Image:
    """A map with values in [0, 1] as an RGB picture."""
    levels = np.clip(np.nan_to_num(heatmap), 0.0, 1.0) * 255
    return Image.fromarray(_lut(colormap)[levels.round().astype(np.uint8)])


def overlay(image, heatmap: np.ndarray, alpha: float = 0.8, colormap: str = DEFAULT_COLORMAP,
            box: tuple[float, float, float, float] | None = None) -> Image.Image:
    """The heatmap blended over the photo, at the photo's own resolution.

    Each pixel's colour weighs alpha * map value, so the photo shows through where the map is low and the colour
    takes over where it is high. box is the region of the photo the map covers (the model's centre crop); outside
    it the photo is dimmed, since the model never saw it. Without a box the map covers the whole photo.
    """
    photo = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    photo = photo.convert("RGB")
    left, top, right, bottom = box or (0, 0, photo.width, photo.height)
    region = (round(left), round(top), round(right), round(bottom))
    size = (max(1, region[2] - region[0]), max(1, region[3] - region[1]))
    level = np.clip(np.asarray(Image.fromarray(heatmap.astype(np.float32)).resize(size, Image.BILINEAR)), 0, 1)
    weight = Image.fromarray((alpha * level * 255).round().astype(np.uint8))
    result = Image.blend(photo, Image.new("RGB", photo.size, (0, 0, 0)), 0.6) if box else photo.copy()
    result.paste(Image.composite(colorize(level, colormap), photo.crop(region), weight), region[:2])
    return result


def side_by_side(panels: list[Image.Image], titles: list[str], height: int = 256) -> Image.Image:
    """Pictures in a row at a common height, each with its title above it."""
    strip = 18
    scaled = [p.resize((max(1, round(p.width * height / p.height)), height), Image.BILINEAR) for p in panels]
    sheet = Image.new("RGB", (sum(p.width for p in scaled) + 4 * (len(scaled) - 1), height + strip), "white")
    draw = ImageDraw.Draw(sheet)
    x = 0
    for panel, title in zip(scaled, titles):
        sheet.paste(panel, (x, strip))
        draw.text((x + 2, 3), title, fill="black")
        x += panel.width + 4
    return sheet


# Box and outline colours, one per class (modulo): distinct on photos and on the inferno colormap.
PALETTE = [(0, 200, 255), (60, 220, 60), (255, 80, 200), (255, 220, 0), (140, 120, 255), (255, 140, 40),
           (0, 255, 170), (255, 255, 255)]


def draw_boxes(image: Image.Image, boxes, captions: list[str], classes) -> Image.Image:
    """Boxes (x1, y1, x2, y2) in the picture's pixels with a caption each, coloured by class."""
    picture = image.copy()
    draw = ImageDraw.Draw(picture)
    width = max(2, round(min(picture.size) / 200))
    for box, caption, cls in zip(np.asarray(boxes).reshape(-1, 4), captions, classes):
        colour = PALETTE[int(cls) % len(PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        left, top, right, bottom = draw.textbbox((x1 + width, y1 + width), caption)
        draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=colour)
        draw.text((x1 + width, y1 + width), caption, fill="black")
    return picture


def outline(image: Image.Image, mask: np.ndarray, colour=PALETTE[0]) -> Image.Image:
    """The border of a boolean mask (any resolution, stretched over the picture) drawn on the picture."""
    picture = image.copy()
    region = np.asarray(Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize(picture.size,
                                                                                       Image.NEAREST)) > 127
    inner = region.copy()
    inner[1:] &= region[:-1]
    inner[:-1] &= region[1:]
    inner[:, 1:] &= region[:, :-1]
    inner[:, :-1] &= region[:, 1:]
    border = region & ~inner
    border[1:] |= border[:-1].copy()  # two pixels wide: still visible in a sheet scaled down
    border[:, 1:] |= border[:, :-1].copy()
    pixels = np.asarray(picture).copy()
    pixels[border] = colour
    return Image.fromarray(pixels)
