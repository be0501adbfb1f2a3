"""A loss curve as PNG, drawn with Pillow (already a dependency: no plotting library for one line chart)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

W, H, MARGIN = 640, 360, 48


def plot_losses(steps: list[int], losses: list[float], path: Path, title: str) -> None:
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((MARGIN, 12), title, fill="black")
    x0, y0, x1, y1 = MARGIN, MARGIN, W - 16, H - MARGIN
    d.rectangle((x0, y0, x1, y1), outline="black")
    if steps:
        lo, hi = min(losses), max(losses)
        hi = hi if hi > lo else lo + 1.0
        s0, s1 = steps[0], max(steps[-1], steps[0] + 1)

        def xy(s, v):
            return x0 + (s - s0) / (s1 - s0) * (x1 - x0), y1 - (v - lo) / (hi - lo) * (y1 - y0)

        d.line([xy(s, v) for s, v in zip(steps, losses)], fill=(31, 119, 180), width=2)
        d.text((4, y0), f"{hi:.3g}", fill="black")
        d.text((4, y1 - 10), f"{lo:.3g}", fill="black")
        d.text((x0, y1 + 6), f"step {s0}", fill="black")
        d.text((x1 - 60, y1 + 6), f"step {steps[-1]}", fill="black")
    d.text((W // 2 - 20, H - 20), "loss", fill="black")
    img.save(path)
