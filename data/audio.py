"""Audio inputs: recordings (WAV, FLAC, OGG, MP3) or pre-computed MFCC frame sequences stored
as ``.npy`` arrays of shape (frames, 13).

Recordings are decoded by ``soundfile`` (libsndfile), mixed to mono, resampled to 8 kHz and
turned into 13 MFCCs per 25 ms hop by ``librosa`` (the conventions of the Free Spoken Digit
Dataset's MFCCs that the built-in ``digits`` data set ships). Scaling uses fixed constants,
never statistics of the data (those would leak private data outside the DP guarantee).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MFCC_SCALE = 0.01  # FSDD MFCCs span about -750..210; this brings them near unit scale
MFCC_COEFFS = 13
SAMPLE_RATE = 8000
RECORDING_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
AUDIO_SUFFIXES = (".npy", *RECORDING_SUFFIXES)


def recording_mfcc(path: str | Path) -> np.ndarray:
    """(frames, 13) float32 MFCCs of a recording: mono, 8 kHz, 50 ms windows, 25 ms hop."""
    import librosa
    import soundfile

    wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = wave.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = librosa.resample(mono, orig_sr=rate, target_sr=SAMPLE_RATE)
    mfcc = librosa.feature.mfcc(
        y=mono, sr=SAMPLE_RATE, n_mfcc=MFCC_COEFFS, n_fft=512, win_length=400, hop_length=200, n_mels=40
    )
    return np.ascontiguousarray(mfcc.T, dtype=np.float32)


def load_mfcc(path: str | Path) -> np.ndarray:
    """The (frames, coefficients) float32 MFCCs of ``path``: a stored ``.npy`` array, or
    computed from a recording."""
    if Path(path).suffix.lower() in RECORDING_SUFFIXES:
        return recording_mfcc(path)
    return np.load(path, allow_pickle=False).astype(np.float32)


def check_audio_file(path: Path) -> str | None:
    """A one-line problem with an audio file, or None when mmfl's audio encoders can read it."""
    if not path.exists():
        return f"audio file not found: {path}"
    suffix = path.suffix.lower()
    if suffix not in AUDIO_SUFFIXES:
        return f"audio {path.name}: unsupported format {suffix or '(none)'} (use {', '.join(AUDIO_SUFFIXES)})"
    if suffix in RECORDING_SUFFIXES:
        import soundfile

        try:
            info = soundfile.info(str(path))
        except Exception as exc:  # noqa: BLE001 - libsndfile reports many kinds of damage
            return f"unreadable audio {path.name}: {str(exc).splitlines()[0][:120]}"
        if info.frames < 1:
            return f"audio {path.name}: holds no samples"
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        return f"unreadable audio {path.name}: {type(exc).__name__}"
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        return f"audio {path.name}: shape {arr.shape} is not (frames, coefficients)"
    if arr.shape[1] != MFCC_COEFFS:
        return (
            f"audio {path.name}: {arr.shape[1]} coefficients per frame; mmfl's audio encoders take "
            f"{MFCC_COEFFS} (an array of frames x {MFCC_COEFFS}), or give the recording itself"
        )
    if not np.isfinite(arr).all():
        return f"audio {path.name}: contains NaN or infinity"
    return None


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
