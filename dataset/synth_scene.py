"""Procedural street scenes for the synthetic benchmark: layout, objects, base colours.

A scene is a road in perspective towards a vanishing point, sidewalks (and grass verges), facades
of buildings, walls, fences and trees on both sides, a far skyline, poles with traffic lights and
signs, cars, trucks, buses, persons, and riders on bicycles or motorcycles. Sizes follow a ground
plane: at image row y an object is `(y - horizon) / (H - horizon)` times its size at the bottom row.
What differs between domains here is only geometry and frequencies (`SceneParams`); colours and
texture are made domain-specific by the style (`dataset.synthetic`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dataset.synth_canvas import EGO, Canvas

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON, RIDER,
 CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(19)

# Base colours (RGB in [0, 1]) before per-instance jitter and the domain style.
SKY_TOP, SKY_LOW = (0.35, 0.55, 0.85), (0.75, 0.85, 0.95)
ROAD_RGB, MARK_RGB = (0.33, 0.32, 0.34), (0.9, 0.9, 0.85)
SIDEWALK_RGB, TERRAIN_RGB = (0.62, 0.56, 0.52), (0.45, 0.55, 0.25)
BUILDING_RGBS = ((0.55, 0.5, 0.45), (0.65, 0.6, 0.5), (0.5, 0.35, 0.3), (0.45, 0.45, 0.5), (0.7, 0.68, 0.6))
WALL_RGB, FENCE_RGB, POLE_RGB = (0.6, 0.58, 0.5), (0.45, 0.38, 0.3), (0.42, 0.42, 0.44)
VEGETATION_RGB = (0.2, 0.42, 0.12)
VEHICLE_RGBS = ((0.85, 0.85, 0.85), (0.55, 0.56, 0.58), (0.1, 0.1, 0.12), (0.7, 0.1, 0.1),
                (0.1, 0.2, 0.55), (0.3, 0.32, 0.35), (0.85, 0.7, 0.1), (0.15, 0.35, 0.2))
CLOTHES_RGBS = ((0.1, 0.1, 0.12), (0.2, 0.25, 0.5), (0.6, 0.1, 0.1), (0.8, 0.8, 0.75), (0.3, 0.5, 0.3),
                (0.5, 0.4, 0.3), (0.85, 0.5, 0.1))
SKIN_RGBS = ((0.9, 0.72, 0.6), (0.7, 0.5, 0.38), (0.45, 0.3, 0.2))
SIGN_RGBS = ((0.8, 0.1, 0.1), (0.1, 0.3, 0.75), (0.95, 0.8, 0.1), (0.95, 0.95, 0.95))
DARK = (0.06, 0.06, 0.07)


@dataclass(frozen=True)
class SceneParams:
    """Geometry and object frequencies of one domain (means of Poisson counts per frame)."""

    horizon: float = 0.45  # horizon row as a fraction of the height (camera height / pitch)
    road_width: tuple[float, float] = (0.3, 0.45)  # half-width at the bottom row, fraction of W
    rates: dict = field(default_factory=dict)  # object kind -> mean count per frame
    vegetation: float = 0.3  # probability that a roadside segment is trees
    verge: float = 0.3  # probability of a grass verge between road and sidewalk, per side
    hood: float = 0.0  # ego-vehicle hood height at the bottom, fraction of H (0: none)


def jitter(rng: np.random.Generator, rgb, amount: float = 0.1) -> np.ndarray:
    """A colour varied per instance: overall brightness and per-channel gain."""
    gain = rng.uniform(1 - amount, 1 + amount) * rng.uniform(1 - amount / 2, 1 + amount / 2, 3)
    return np.clip(np.asarray(rgb, np.float32) * gain, 0, 1).astype(np.float32)


def pick(rng: np.random.Generator, colours) -> np.ndarray:
    """One of `colours`, jittered."""
    return jitter(rng, colours[rng.integers(len(colours))])


class Scene:
    """Draws one frame on a `Canvas` from a random generator and the domain's `SceneParams`."""

    def __init__(self, rng: np.random.Generator, h: int, w: int, params: SceneParams) -> None:
        self.rng, self.h, self.w, self.p = rng, h, w, params
        self.c = Canvas(h, w, rng)
        self.hy = h * float(np.clip(rng.normal(params.horizon, 0.025), 0.25, 0.65))
        self.vx = w * rng.uniform(0.4, 0.6)
        self.span = h - self.hy  # rows from horizon to bottom
        self.rw = w * rng.uniform(*params.road_width)
        self.sw = self.rw * rng.uniform(0.25, 0.5, 2)  # sidewalk widths (left, right) at the bottom

    # -- helpers --------------------------------------------------------------------------------
    def s(self, y):
        """Perspective scale of ground row y (1 at the bottom row)."""
        return (y - self.hy) / self.span

    def meter(self, y) -> float:
        """Pixels per metre at ground row y (the road's half-width is ~4 m)."""
        return self.rw * self.s(y) / 4.0

    def draw(self) -> Canvas:
        """Paint background, roadside, then objects far to near; return the canvas."""
        self.background()
        self.road()
        for side in (0, 1):
            self.roadside(side)
        objects = []
        for kind, rate in self.p.rates.items():
            if kind.startswith("_"):  # not an object drawn on the road (poles go with the roadside)
                continue
            for _ in range(self.rng.poisson(rate)):
                y = self.hy + self.span * self.rng.uniform(0.06, 0.95) ** 0.8
                objects.append((y, kind))
        for y, kind in sorted(objects):
            getattr(self, kind)(y)
        if self.p.hood > 0:
            self.hood()
        return self.c

    # -- background -----------------------------------------------------------------------------
    def background(self) -> None:
        """The sky gradient, the terrain below the horizon and the far skyline."""
        c, rng = self.c, self.rng
        t = np.clip(c.ys / max(self.hy, 1.0), 0, 1)[..., None]
        sky = (1 - t) * np.array(SKY_TOP, np.float32) + t * np.array(SKY_LOW, np.float32)
        clouds = np.maximum(c.low, 0) * rng.uniform(0.1, 0.5)
        c.region(np.ones((self.h, self.w), bool), SKY, jitter(rng, (1, 1, 1), 0.08) * sky, clouds)
        ground = c.ys >= self.hy
        c.region(ground, TERRAIN, jitter(rng, TERRAIN_RGB), 0.25 * c.mid + 0.1 * c.fine)
        # a far skyline of low buildings and trees just above the horizon
        knots = rng.uniform(0.02, 0.12, 12) * self.h
        height = np.interp(c.xs[0], np.linspace(0, self.w, 12), knots)
        far = (c.ys < self.hy + 1) & (c.ys >= self.hy - height[None, :])
        trees = (np.sin(c.xs / self.w * rng.uniform(6, 14) + rng.uniform(0, 6)) > 0.3)
        c.region(far & ~trees, BUILDING, pick(rng, BUILDING_RGBS), 0.1 * c.mid)
        c.region(far & trees, VEGETATION, jitter(rng, VEGETATION_RGB), 0.35 * c.mid + 0.2 * c.fine)

    def road(self) -> None:
        """The road in perspective with its lane marks, verges and sidewalks."""
        c, rng = self.c, self.rng
        s = np.maximum(self.s(c.ys), 0)
        dx = c.xs - self.vx
        below = c.ys >= self.hy
        for side, sign in ((0, -1), (1, 1)):
            outer = (self.rw + self.sw[side]) * s
            band = below & (dx * sign > 0) & (np.abs(dx) <= outer)
            tiles = 0.12 * ((np.sin(40.0 / np.maximum(c.ys - self.hy, 1)) > 0.8) - 0.2)
            c.region(band, SIDEWALK, jitter(rng, SIDEWALK_RGB), tiles + 0.06 * c.fine + 0.05 * c.mid)
            if rng.random() < self.p.verge:
                inner = self.rw * s + 0.45 * self.sw[side] * s
                c.region(band & (np.abs(dx) <= inner), TERRAIN, jitter(rng, TERRAIN_RGB),
                         0.25 * c.mid + 0.1 * c.fine)
        road = below & (np.abs(dx) <= self.rw * s)
        c.region(road, ROAD, jitter(rng, ROAD_RGB, 0.15), 0.07 * c.fine + 0.08 * c.low)
        # lane marks: dashes periodic in depth (1 / row distance), thin lines in perspective
        depth = 1.0 / np.maximum(c.ys - self.hy, 0.5)
        dash = np.sin(depth * self.span * rng.uniform(3, 6)) > 0
        half = np.maximum(0.03 * self.rw * s, 0.35)
        lanes = [0.0] if rng.random() < 0.7 else [-1 / 3, 1 / 3]
        marks = np.zeros_like(road)
        for u in lanes:
            marks |= (np.abs(dx - u * self.rw * s) <= half) & dash
        for u in (-0.93, 0.93):  # solid edge lines
            marks |= np.abs(dx - u * self.rw * s) <= half
        c.region(road & marks, ROAD, jitter(rng, MARK_RGB, 0.05), 0.02 * c.fine)

    def roadside(self, side: int) -> None:
        """Facades (buildings, trees, walls, fences) along one side, in perspective."""
        c, rng = self.c, self.rng
        sign = -1 if side == 0 else 1
        dist = (c.xs - self.vx) * sign  # horizontal distance from the vanishing point, this side
        reach = self.vx if side == 0 else self.w - self.vx
        ground = dist * self.span / (self.rw + self.sw[side])  # facade foot below horizon, in rows
        bounds = np.sort(rng.uniform(0.1, 1.0, rng.integers(1, 4)))
        bounds = np.concatenate([[rng.uniform(0.05, 0.2)], bounds, [1.5]]) * reach
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            seg = (dist > lo) & (dist <= hi)
            kind = rng.random()
            if kind < 0.1:
                continue  # a gap: the far skyline and terrain stay visible
            if kind < 0.1 + self.p.vegetation:
                top = ground * rng.uniform(1.0, 2.5) * (1 + 0.25 * c.mid)
                mask = seg & (c.ys >= self.hy - top) & (c.ys < self.hy + ground)
                c.region(mask, VEGETATION, jitter(rng, VEGETATION_RGB, 0.2), 0.35 * c.mid + 0.25 * c.fine)
            else:
                top = ground * rng.uniform(1.2, 4.0)
                mask = seg & (c.ys >= self.hy - top) & (c.ys < self.hy + ground)
                height = (self.hy + ground - c.ys) / np.maximum(ground, 1e-3)  # in units of `ground`
                windows = (np.sin(height * rng.uniform(5, 9)) > 0.2) & \
                          (np.sin(reach / np.maximum(dist, 1) * rng.uniform(8, 16)) > 0.0) & (height > 0.6)
                c.region(mask, BUILDING, pick(rng, BUILDING_RGBS), -0.45 * windows + 0.06 * c.mid)
            low = rng.random()
            if low < 0.35:  # a low wall or fence in front of the segment
                cls = WALL if low < 0.15 else FENCE
                top = ground * rng.uniform(0.3, 0.6)
                mask = seg & (c.ys >= self.hy + ground - top) & (c.ys < self.hy + ground)
                slats = np.sin(reach / np.maximum(dist, 1) * 60.0) > 0 if cls == FENCE else 0.0
                c.region(mask, cls, jitter(rng, WALL_RGB if cls == WALL else FENCE_RGB),
                         0.3 * slats - 0.1 + 0.05 * c.fine)
        self.poles(side)

    def poles(self, side: int) -> None:
        """Poles on the outer sidewalk, some carrying a traffic light or a sign."""
        rng = self.rng
        sign = -1 if side == 0 else 1
        for _ in range(rng.poisson(self.p.rates.get("_poles", 1.5))):
            y = self.hy + self.span * rng.uniform(0.1, 0.9)
            m = self.meter(y)
            x = self.vx + sign * (self.rw + 0.8 * self.sw[side]) * self.s(y)
            top = y - m * rng.uniform(4.0, 7.0)
            self.c.rect(x - 0.08 * m, top, x + 0.08 * m, y, POLE, jitter(self.rng, POLE_RGB))
            kind = rng.random()
            if kind < 0.4:
                arm = x - sign * m * rng.uniform(0.0, 2.5)
                self.c.segment(x, top, arm, top, 0.12 * m, POLE, jitter(self.rng, POLE_RGB))
                self.c.rect(arm - 0.2 * m, top, arm + 0.2 * m, top + 0.9 * m, LIGHT, DARK)
                lamp = top + 0.15 * m + 0.3 * m * rng.integers(3)
                lit = ((0.9, 0.1, 0.1), (0.95, 0.7, 0.1), (0.1, 0.9, 0.3))[rng.integers(3)]
                self.c.ellipse(arm, lamp, 0.12 * m, 0.12 * m, LIGHT, lit, 0.0)
            elif kind < 0.85:
                cy = y - m * rng.uniform(2.2, 3.0)
                colour = pick(rng, SIGN_RGBS)
                if rng.random() < 0.5:
                    self.c.ellipse(x, cy, 0.35 * m, 0.35 * m, SIGN, colour, 0.0)
                else:
                    self.c.rect(x - 0.35 * m, cy - 0.35 * m, x + 0.35 * m, cy + 0.35 * m, SIGN, colour, 0.0)

    # -- objects (called by name from SceneParams.rates) ------------------------------------------
    def _lane_x(self, y: float, lo: float, hi: float) -> float:
        u = self.rng.uniform(lo, hi) * self.rng.choice((-1, 1))
        return self.vx + u * self.rw * self.s(y)

    def car(self, y: float) -> None:
        """A car standing on ground row `y`."""
        m, c = self.meter(y), self.c
        x = self._lane_x(y, 0.0, 0.95)
        body = pick(self.rng, VEHICLE_RGBS)
        if self.rng.random() < 0.3:  # side view (parked or crossing)
            half = 2.2 * m
            c.rect(x - half, y - 1.0 * m, x + half, y - 0.3 * m, CAR, body)
            c.polygon([(x - 1.2 * m, y - 1.0 * m), (x + 1.3 * m, y - 1.0 * m), (x + 0.8 * m, y - 1.5 * m),
                       (x - 0.8 * m, y - 1.5 * m)], CAR, body * 0.4, -0.3)
            for wx in (x - 1.4 * m, x + 1.4 * m):
                c.ellipse(wx, y - 0.33 * m, 0.33 * m, 0.33 * m, CAR, DARK, 0.0)
            return
        half = 0.9 * m
        c.rect(x - half, y - 0.95 * m, x + half, y - 0.25 * m, CAR, body)
        c.polygon([(x - half, y - 0.95 * m), (x + half, y - 0.95 * m), (x + 0.65 * half, y - 1.5 * m),
                   (x - 0.65 * half, y - 1.5 * m)], CAR, body * 0.35, -0.3)
        for wx in (x - 0.75 * half, x + 0.75 * half):
            c.rect(wx - 0.15 * m, y - 0.3 * m, wx + 0.15 * m, y, CAR, DARK, 0.0)
        for lx in (x - 0.85 * half, x + 0.85 * half):
            c.rect(lx - 0.1 * m, y - 0.85 * m, lx + 0.1 * m, y - 0.7 * m, CAR, (0.8, 0.1, 0.1), 0.0)

    def truck(self, y: float) -> None:
        """A truck standing on ground row `y`."""
        m, c = self.meter(y), self.c
        x = self._lane_x(y, 0.2, 0.8)
        half = 1.2 * m
        colour = pick(self.rng, VEHICLE_RGBS[:2] + BUILDING_RGBS[:2])
        c.rect(x - half, y - 3.4 * m, x + half, y - 0.4 * m, TRUCK, colour, 0.1 * self.c.mid)
        c.rect(x - half, y - 0.6 * m, x + half, y - 0.4 * m, TRUCK, DARK, 0.0)
        for wx in (x - 0.7 * half, x + 0.7 * half):
            c.rect(wx - 0.25 * m, y - 0.45 * m, wx + 0.25 * m, y, TRUCK, DARK, 0.0)

    def bus(self, y: float) -> None:
        """A bus standing on ground row `y`."""
        m, c = self.meter(y), self.c
        x = self._lane_x(y, 0.2, 0.8)
        colour = pick(self.rng, ((0.85, 0.75, 0.1), (0.8, 0.15, 0.1), (0.9, 0.9, 0.9), (0.2, 0.4, 0.7)))
        half = (5.0 if self.rng.random() < 0.35 else 1.25) * m  # side or rear view
        c.rect(x - half, y - 3.2 * m, x + half, y - 0.3 * m, BUS, colour)
        c.rect(x - 0.95 * half, y - 2.7 * m, x + 0.95 * half, y - 1.6 * m, BUS, colour * 0.3, -0.2)
        for wx in (x - 0.75 * half, x + 0.75 * half):
            c.rect(wx - 0.3 * m, y - 0.5 * m, wx + 0.3 * m, y, BUS, DARK, 0.0)

    def _body(self, x: float, y: float, m: float, cls: int, seat: float = 0.0) -> None:
        """A standing (seat=0) or seated person whose feet / seat is at row y - seat * m."""
        rng, c = self.rng, self.c
        height = rng.uniform(1.6, 1.9)
        shirt, legs = pick(rng, CLOTHES_RGBS), pick(rng, CLOTHES_RGBS) * 0.6
        if seat == 0.0:
            gap = rng.uniform(0.02, 0.12) * m
            for lx in (x - gap - 0.08 * m, x + gap + 0.08 * m):
                c.rect(lx - 0.08 * m, y - 0.85 * m, lx + 0.08 * m, y, cls, legs)
            base = y - 0.85 * m
        else:
            base = y - seat * m
            c.segment(x, base, x + 0.35 * m, base + 0.5 * m, 0.16 * m, cls, legs)
        c.rect(x - 0.22 * m, base - 0.65 * m, x + 0.22 * m, base + 0.02 * m, cls, shirt)
        c.ellipse(x, base - (height - 0.85 - 0.65) * m / 2 - 0.65 * m, 0.11 * m, 0.13 * m, cls,
                  pick(rng, SKIN_RGBS), 0.0)

    def person(self, y: float) -> None:
        """A pedestrian standing on ground row `y`."""
        m = self.meter(y)
        side = self.rng.integers(2)
        if self.rng.random() < 0.15:
            x = self._lane_x(y, 0.0, 0.9)  # crossing the road
        else:
            u = 1.0 + self.rng.uniform(0.1, 0.9) * self.sw[side] / self.rw
            x = self.vx + (u if side else -u) * self.rw * self.s(y)
        self._body(x, y, m, PERSON)

    def rider(self, y: float) -> None:
        """A rider on a bicycle or motorcycle on ground row `y`."""
        m, c, rng = self.meter(y), self.c, self.rng
        x = self._lane_x(y, 0.55, 1.0)
        motor = rng.random() < 0.35
        cls = MOTORCYCLE if motor else BICYCLE
        r = (0.32 if motor else 0.35) * m
        frame = pick(rng, VEHICLE_RGBS)
        for wx in (x - 0.6 * m, x + 0.6 * m):
            if motor:
                c.ellipse(wx, y - r, r, r, cls, DARK, 0.0)
            else:
                c.ring(wx, y - r, r, 0.07 * m, cls, DARK)
        if motor:
            c.ellipse(x, y - 0.75 * m, 0.55 * m, 0.25 * m, cls, frame)
        else:
            c.segment(x - 0.6 * m, y - r, x, y - 0.9 * m, 0.06 * m, cls, frame)
            c.segment(x + 0.6 * m, y - r, x + 0.1 * m, y - 0.9 * m, 0.06 * m, cls, frame)
            c.segment(x - 0.6 * m, y - r, x + 0.6 * m, y - r, 0.06 * m, cls, frame)
        self._body(x - 0.1 * m, y, m, RIDER, seat=1.0)

    def hood(self) -> None:
        """The ego vehicle's bonnet at the bottom edge (ignored by the evaluation)."""
        c = self.c
        depth = self.p.hood * self.h
        c.ellipse(self.w / 2, self.h + 0.6 * depth, self.w * 0.75, 1.6 * depth, EGO,
                  jitter(self.rng, (0.15, 0.15, 0.17)), 0.15 * c.low)


def draw_scene(rng: np.random.Generator, h: int, w: int, params: SceneParams) -> Canvas:
    """Draw one random street scene of size (h, w); returns the canvas (label, colour, shade)."""
    return Scene(rng, h, w, params).draw()
