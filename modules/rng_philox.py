"""CPU imitation of ``torch.randn(..., device="cuda")``: Philox4x32-10 counter-based random numbers and the
Box-Muller transform, in NumPy (A1111's "NV" random number source).

A1111 compatibility: same module path and ``Generator(seed).randn(shape)`` API as A1111's ``modules/rng_philox.py``,
so the same seed gives the same noise as A1111 with "Random number generator source: NV" on any hardware.

    >>> Generator(0).randn((3, 4))[0]  # doctest: +SKIP
    array([-0.92466259, -0.42534415, -2.6438457 ,  0.14518388], dtype=float32)

Each ``randn`` call uses a new Philox offset (counter word 0) and one counter per element (counter word 2), keeps the
first Box-Muller output and discards the rest, as CUDA's curand-based randn does for one thread per element.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Generator", "philox4x32", "box_muller"]

PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # round multipliers
PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # key schedule (Weyl) increments

# The constants as float32, then used in float64 arithmetic (NumPy promotes uint32 x float32 to float64).
_TWO_POW32_INV = float(np.float32(2.3283064e-10))
_TWO_POW32_INV_2PI = float(np.float32(2.3283064e-10 * 6.2831855))

_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


def _mulhilo(a: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    prod = a.astype(np.uint64) * np.uint64(m)
    return (prod >> _SHIFT32).astype(np.uint32), (prod & _MASK32).astype(np.uint32)


def philox4x32(counter: np.ndarray, key: np.ndarray, rounds: int = 10) -> np.ndarray:
    """Philox4x32 on many counters at once.

    counter: (4, N) uint32; key: (2, N) uint32. Returns a new (4, N) uint32 array.
    """
    c0, c1, c2, c3 = (np.array(c, dtype=np.uint32) for c in counter)
    k0 = np.array(key[0], dtype=np.uint32)
    k1 = np.array(key[1], dtype=np.uint32)
    w0, w1 = np.uint32(PHILOX_W[0]), np.uint32(PHILOX_W[1])
    for r in range(rounds):
        if r:
            k0 = k0 + w0  # uint32 arithmetic wraps modulo 2**32
            k1 = k1 + w1
        hi0, lo0 = _mulhilo(c0, PHILOX_M[0])
        hi1, lo1 = _mulhilo(c2, PHILOX_M[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return np.stack([c0, c1, c2, c3])


def box_muller(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """First output of the Box-Muller transform of two uint32 arrays, as float32."""
    u = x.astype(np.float64) * _TWO_POW32_INV + _TWO_POW32_INV / 2
    v = y.astype(np.float64) * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
    s = np.sqrt(-2.0 * np.log(u))
    return (s * np.sin(v)).astype(np.float32)


class Generator:
    """Normal random numbers equal to what ``torch.randn`` gives on a CUDA device seeded with ``seed``."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.offset = 0

    def randn(self, shape) -> np.ndarray:
        shape = tuple(int(s) for s in shape)
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if n >= 2**32:
            raise ValueError("at most 2**32 numbers per call")

        counter = np.zeros((4, n), dtype=np.uint32)
        counter[0] = self.offset
        counter[2] = np.arange(n, dtype=np.uint32)
        self.offset += 1

        seed64 = self.seed & 0xFFFFFFFFFFFFFFFF
        key = np.empty((2, n), dtype=np.uint32)
        key[0] = seed64 & 0xFFFFFFFF
        key[1] = seed64 >> 32

        g = philox4x32(counter, key)
        return box_muller(g[0], g[1]).reshape(shape)
