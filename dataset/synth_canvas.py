"""Vectorised drawing for the synthetic benchmark: a label + colour canvas and shape masks.

Every shape is a boolean mask computed on the pixel-centre grid of its bounding box (no per-pixel
Python loops). A canvas keeps, per pixel, a train id, a base colour and a texture value ("shade");
the domain style turns them into the final image later.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

EGO = 254  # internal id of the ego vehicle's hood: written as label id 1 / ignored


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-ish value noise of feature size `cell` pixels, float32 (h, w)."""
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    up = ndimage.zoom(grid, (h / (gh - 2) + 1e-6, w / (gw - 2) + 1e-6), order=1, prefilter=False)
    return up[:h, :w]


class Canvas:
    """A frame being drawn: train ids, base colours and texture, painted back to front."""

    def __init__(self, h: int, w: int, rng: np.random.Generator) -> None:
        self.h, self.w = h, w
        self.label = np.full((h, w), 255, np.uint8)
        self.color = np.zeros((h, w, 3), np.float32)
        self.shade = np.zeros((h, w), np.float32)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        self.ys, self.xs = ys + 0.5, xs + 0.5  # pixel centres
        self.fine = rng.standard_normal((h, w)).astype(np.float32)
        self.mid = smooth_noise(rng, h, w, max(2.0, w / 40))
        self.low = smooth_noise(rng, h, w, max(4.0, w / 8))

    def window(self, x0: float, y0: float, x1: float, y1: float):
        """Slices of the pixels whose centres may lie in [x0, x1] x [y0, y1] (None when off-frame)."""
        ix0, iy0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        ix1, iy1 = min(int(np.ceil(x1)) + 1, self.w), min(int(np.ceil(y1)) + 1, self.h)
        if ix0 >= ix1 or iy0 >= iy1:
            return None
        return slice(iy0, iy1), slice(ix0, ix1)

    def paint(self, sl, mask: np.ndarray, cls: int, color, shade=None) -> None:
        """Give the masked pixels of window `sl` class `cls`, colour (3,) or (h,w,3), texture."""
        if not mask.any():
            return
        self.label[sl][mask] = cls
        color = np.asarray(color, np.float32)
        self.color[sl][mask] = color[mask] if color.ndim == 3 else color
        if shade is None:
            shade = 0.05 * self.fine[sl] + 0.05 * self.mid[sl]
        self.shade[sl][mask] = shade[mask] if np.ndim(shade) == 2 else shade

    def grid(self, sl):
        """Pixel-centre coordinates (ys, xs) of window `sl`."""
        return self.ys[sl], self.xs[sl]

    # -- shapes ---------------------------------------------------------------------------------
    def rect(self, x0, y0, x1, y1, cls, color, shade=None, min_size: float = 1.0) -> None:
        """Axis-aligned rectangle, at least `min_size` pixels wide and high (thin poles stay visible)."""
        if x1 - x0 < min_size:
            cx = (x0 + x1) / 2
            x0, x1 = cx - min_size / 2, cx + min_size / 2
        if y1 - y0 < min_size:
            cy = (y0 + y1) / 2
            y0, y1 = cy - min_size / 2, cy + min_size / 2
        sl = self.window(x0, y0, x1, y1)
        if sl is None:
            return
        ys, xs = self.grid(sl)
        mask = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
        self.paint(sl, mask, cls, color, self._local(shade, sl))

    def ellipse(self, cx, cy, rx, ry, cls, color, shade=None) -> None:
        """Filled ellipse (radii at least half a pixel)."""
        rx, ry = max(rx, 0.6), max(ry, 0.6)
        sl = self.window(cx - rx, cy - ry, cx + rx, cy + ry)
        if sl is None:
            return
        ys, xs = self.grid(sl)
        mask = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
        self.paint(sl, mask, cls, color, self._local(shade, sl))

    def ring(self, cx, cy, r, thickness, cls, color) -> None:
        """Circle outline (a wheel), at least one pixel thick."""
        t = max(thickness, 1.0) / 2
        sl = self.window(cx - r - t, cy - r - t, cx + r + t, cy + r + t)
        if sl is None:
            return
        ys, xs = self.grid(sl)
        mask = np.abs(np.hypot(xs - cx, ys - cy) - r) <= t
        self.paint(sl, mask, cls, color)

    def segment(self, x0, y0, x1, y1, thickness, cls, color) -> None:
        """Thick line segment (bicycle frames, limbs, arms of poles)."""
        t = max(thickness, 1.0) / 2
        sl = self.window(min(x0, x1) - t, min(y0, y1) - t, max(x0, x1) + t, max(y0, y1) + t)
        if sl is None:
            return
        ys, xs = self.grid(sl)
        dx, dy = x1 - x0, y1 - y0
        k = np.clip(((xs - x0) * dx + (ys - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
        mask = np.hypot(xs - (x0 + k * dx), ys - (y0 + k * dy)) <= t
        self.paint(sl, mask, cls, color)

    def polygon(self, points, cls, color, shade=None) -> None:
        """Filled convex polygon given counter- or clockwise (x, y) points."""
        pts = np.asarray(points, np.float32)
        sl = self.window(pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max())
        if sl is None:
            return
        ys, xs = self.grid(sl)
        sides = []
        for (ax, ay), (bx, by) in zip(pts, np.concatenate([pts[1:], pts[:1]])):
            sides.append((bx - ax) * (ys - ay) - (by - ay) * (xs - ax))
        sides = np.stack(sides)
        mask = (sides >= 0).all(0) | (sides <= 0).all(0)
        self.paint(sl, mask, cls, color, self._local(shade, sl))

    def region(self, mask: np.ndarray, cls, color, shade=None) -> None:
        """A full-frame mask (background regions)."""
        sl = (slice(0, self.h), slice(0, self.w))
        self.paint(sl, mask, cls, color, shade)

    @staticmethod
    def _local(shade, sl):
        if shade is None or np.ndim(shade) == 0:
            return shade
        return shade[sl]
