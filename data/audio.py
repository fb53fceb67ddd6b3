"""Audio inputs: MFCC frame sequences stored as ``.npy`` arrays of shape (frames, coefficients).

Scaling uses fixed constants, never statistics of the data (those would leak private data
outside the DP guarantee).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MFCC_SCALE = 0.01  # FSDD MFCCs span about -750..210; this brings them near unit scale


def load_mfcc(path: str | Path) -> np.ndarray:
    """The (frames, coefficients) float32 array stored at ``path``."""
    return np.load(path, allow_pickle=False).astype(np.float32)


def fixed_length(seq: np.ndarray, frames: int) -> np.ndarray:
    """Centre-crop or zero-pad a (T, C) sequence to ``frames`` rows, returned as (C, frames)."""
    t, c = seq.shape
    out = np.zeros((frames, c), dtype=np.float32)
    if t >= frames:
        start = (t - frames) // 2
        out[:] = seq[start : start + frames]
    else:
        start = (frames - t) // 2
        out[start : start + t] = seq
    return (out * MFCC_SCALE).T


def pooled_stats(seq: np.ndarray) -> np.ndarray:
    """Mean, std, min and max of each coefficient over time: a (4 * C,) vector."""
    s = seq * MFCC_SCALE
    return np.concatenate([s.mean(0), s.std(0), s.min(0), s.max(0)]).astype(np.float32)
