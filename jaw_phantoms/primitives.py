"""Geometric primitives of the jaw phantoms, in subject millimetres: smooth noise, superellipsoids and capsules.

Each solid gives an approximate signed distance (negative inside) for coordinate arrays of any (broadcastable) shape,
and its bounding box, so that a renderer evaluates it only where it can be.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class SmoothNoise:
    """A smooth random field in [-1, 1]: a weighted sum of plane waves in subject millimetres (spacing-independent)."""

    directions: np.ndarray  # (K, 3) unit vectors
    wavenumbers: np.ndarray  # (K,) radians per mm
    phases: np.ndarray  # (K,)
    weights: np.ndarray  # (K,), summing to 1

    @classmethod
    def sample(cls, rng: np.random.Generator, waves: int, wavelength_mm: tuple[float, float]) -> SmoothNoise:
        directions = rng.normal(size=(waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavenumbers = 2.0 * np.pi / rng.uniform(*wavelength_mm, size=waves)
        weights = rng.uniform(0.5, 1.0, size=waves)
        return cls(directions, wavenumbers, rng.uniform(0.0, 2.0 * np.pi, size=waves), weights / weights.sum())

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        field = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=np.float32)
        for (ux, uy, uz), k, phase, weight in zip(self.directions, self.wavenumbers, self.phases, self.weights):
            field += np.float32(weight) * np.sin(
                np.float32(k * ux) * x + np.float32(k * uy) * y + np.float32(k * uz) * z + np.float32(phase)
            )
        return field


@dataclass(frozen=True, eq=False)
class Ellipsoid:
    """Superellipsoid ``sum |(p - centre) / radii| ** exponent <= 1`` in subject millimetres (exponent 2 or 4)."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    exponent: int = 2

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.subtract(self.centre, self.radii), np.add(self.centre, self.radii)

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Approximate signed distance in mm (negative inside), exact on the principal axes."""
        total = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=np.float32)
        for coordinate, centre, radius in zip((x, y, z), self.centre, self.radii):
            total += even_power((coordinate - np.float32(centre)) / np.float32(radius), self.exponent)
        return (total ** np.float32(1.0 / self.exponent) - 1.0) * np.float32(min(self.radii))


@dataclass(frozen=True, eq=False)
class Capsule:
    """All points within ``radius`` mm of the segment from ``start`` to ``end`` (subject millimetres)."""

    start: tuple[float, float, float]
    end: tuple[float, float, float]
    radius: float

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.minimum(self.start, self.end) - self.radius, np.maximum(self.start, self.end) + self.radius

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        axis = np.subtract(self.end, self.start)
        offsets = [coordinate - np.float32(origin) for coordinate, origin in zip((x, y, z), self.start)]
        t = sum(np.float32(a) * o for a, o in zip(axis, offsets)) / np.float32(axis @ axis)
        np.clip(t, 0.0, 1.0, out=t)
        squared = sum((o - np.float32(a) * t) ** 2 for a, o in zip(axis, offsets))
        return np.sqrt(squared) - np.float32(self.radius)


def even_power(values: np.ndarray, exponent: int) -> np.ndarray:
    """``values ** exponent`` for an even exponent by repeated squaring (much faster than ``np.power``)."""
    result = values * values
    for _ in range(exponent.bit_length() - 2):
        result *= result
    return result


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation matrix for intrinsic rotations about x, y and z (degrees)."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx
