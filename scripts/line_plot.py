"""A line plot with a ± band per series, drawn with PIL (matplotlib is not a dependency of ddpm-seg)."""
from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw, ImageFont

from ddpmseg.common.atomic import atomic_write

# Colour-blind-safe line colours (Okabe-Ito), in series order.
COLOURS = [(0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233)]
SIZE = (640, 420)  # plot image width x height in pixels
MARGIN = (60, 30, 150, 45)  # left, top, right (the legend), bottom


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi]."""
    if hi <= lo:
        lo, hi = lo - 1, hi + 1
    raw = (hi - lo) / count
    step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    return [step * k for k in range(math.floor(lo / step), math.ceil(hi / step) + 1)]


def line_plot(series: dict[str, list[tuple[float, float, float]]], xlabel: str, ylabel: str, title: str) -> Image.Image:
    """``series``: name -> [(x, mean, std), ...] sorted by x. Lines with a translucent ± std band."""
    points = [p for values in series.values() for p in values]
    xt = nice_ticks(min(p[0] for p in points), max(p[0] for p in points))
    yt = nice_ticks(min(p[1] - p[2] for p in points), max(p[1] + p[2] for p in points))
    (w, h), (ml, mt, mr, mb) = SIZE, MARGIN

    def px(x: float, y: float) -> tuple[float, float]:
        return (ml + (x - xt[0]) / (xt[-1] - xt[0]) * (w - ml - mr),
                h - mb - (y - yt[0]) / (yt[-1] - yt[0]) * (h - mt - mb))
    img = Image.new("RGBA", SIZE, (255, 255, 255, 255))
    draw, font = ImageDraw.Draw(img), ImageFont.load_default(size=11)
    for x in xt:
        draw.line([px(x, yt[0]), px(x, yt[-1])], fill=(225, 225, 225))
        draw.text(px(x, yt[0]), f"{x:g}", fill=(0, 0, 0), font=font, anchor="mt")
    for y in yt:
        draw.line([px(xt[0], y), px(xt[-1], y)], fill=(225, 225, 225))
        draw.text(px(xt[0], y), f"{y:g} ", fill=(0, 0, 0), font=font, anchor="rm")
    draw.rectangle([px(xt[0], yt[-1]), px(xt[-1], yt[0])], outline=(0, 0, 0))
    for k, (name, values) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        band = Image.new("RGBA", SIZE, (0, 0, 0, 0))
        outline = [px(x, m + s) for x, m, s in values] + [px(x, m - s) for x, m, s in reversed(values)]
        if len(values) > 1:
            ImageDraw.Draw(band).polygon(outline, fill=colour + (50,))
            img = Image.alpha_composite(img, band)
            draw = ImageDraw.Draw(img)
        line = [px(x, m) for x, m, _ in values]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for x, y in line:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        ly = mt + 10 + 18 * k
        draw.line([(w - mr + 12, ly), (w - mr + 32, ly)], fill=colour, width=3)
        draw.text((w - mr + 38, ly), name, fill=(0, 0, 0), font=font, anchor="lm")
    draw.text(((ml + w - mr) / 2, h - 8), xlabel, fill=(0, 0, 0), font=font, anchor="md")
    draw.text((ml, 4), f"{title} ({ylabel}; band: ± std)", fill=(0, 0, 0), font=font)
    return img.convert("RGB")


def save_png(img: Image.Image, path: str) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write(path, lambda f: f.write(buf.getvalue()))
