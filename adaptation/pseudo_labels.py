"""Cross-modal pseudo-label fusion (SUMMIT, Simons et al. ICCV 2023), on probability tables.

``IGNORE`` (-100) marks a sample without a pseudo-label. ``p`` are (N, C) class probabilities.

* Certainty filter: with ``y = argmax p``, keep ``y_n`` if ``p[n, y_n] >= min(median_c, cap)``
  where ``median_c`` is the median confidence of the samples predicted as ``c``.
* Agreement filtering (AF): each modality's certainty-filtered label; keep where both agree.
* Entropy weighting (EW): ``w_m = exp(-H(p_m) / T)``, ``p = (w_a p_a + w_b p_b) / (w_a + w_b)``,
  then the certainty filter on ``p``.
* Hypothesis-test recovery (optional): for a sample still without a label whose raw predictions
  disagree, class-conditional diagonal Gaussians of each modality's features (fit on the
  labeled samples) test both hypotheses; modality a is rejected if
  ``N(f_a; y_a) <= k N(f_a; y_b)``, and symmetrically for b (the reference code tests b
  against itself, so its recovery only ever works one way). The label is recovered when exactly
  one modality is rejected: the other one's prediction.
"""

from __future__ import annotations

import numpy as np

IGNORE = -100


def certainty_filter(probs: np.ndarray, cap: float = 0.9) -> np.ndarray:
    """Per-class median certainty filter (see module docstring)."""
    pred = probs.argmax(1)
    conf = probs[np.arange(len(probs)), pred]
    labels = np.full(len(probs), IGNORE, dtype=np.int64)
    for c in np.unique(pred):
        rows = pred == c
        threshold = min(float(np.median(conf[rows])), cap)
        keep = rows & (conf >= threshold)
        labels[keep] = c
    return labels


def agreement_filter(p_a: np.ndarray, p_b: np.ndarray, cap: float = 0.9) -> np.ndarray:
    a, b = certainty_filter(p_a, cap), certainty_filter(p_b, cap)
    return np.where((a == b) & (a != IGNORE), a, IGNORE)


def entropy(probs: np.ndarray) -> np.ndarray:
    return -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(1)


def entropy_fusion(p_a: np.ndarray, p_b: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Entropy-weighted mean of two probability tables."""
    w_a, w_b = np.exp(-entropy(p_a) / temperature), np.exp(-entropy(p_b) / temperature)
    return (w_a[:, None] * p_a + w_b[:, None] * p_b) / (w_a + w_b)[:, None]


def entropy_weighting(
    p_a: np.ndarray, p_b: np.ndarray, cap: float = 0.9, temperature: float = 1.0
) -> np.ndarray:
    return certainty_filter(entropy_fusion(p_a, p_b, temperature), cap)


def _log_gauss(features: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    return -0.5 * (np.log(2 * np.pi * var) + (features - mean) ** 2 / var).sum(-1)


def class_gaussians(
    features: np.ndarray, labels: np.ndarray, classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class diagonal Gaussians from labeled rows: (means, variances, fitted mask)."""
    d = features.shape[1]
    means, variances = np.zeros((classes, d)), np.ones((classes, d))
    fitted = np.zeros(classes, dtype=bool)
    for c in range(classes):
        rows = features[labels == c]
        if len(rows) >= 2:
            means[c], variances[c] = rows.mean(0), rows.var(0) + 1e-6
            fitted[c] = True
    return means, variances, fitted


def hypothesis_recovery(
    labels: np.ndarray,
    p_a: np.ndarray,
    p_b: np.ndarray,
    f_a: np.ndarray,
    f_b: np.ndarray,
    k: float = 0.5,
) -> np.ndarray:
    """Recover ignored labels where the two modalities' raw predictions disagree (symmetric)."""
    classes = p_a.shape[1]
    raw_a, raw_b = p_a.argmax(1), p_b.argmax(1)
    out = labels.copy()
    candidates = np.flatnonzero((labels == IGNORE) & (raw_a != raw_b))
    if len(candidates) == 0:
        return out
    mean_a, var_a, fit_a = class_gaussians(f_a, labels, classes)
    mean_b, var_b, fit_b = class_gaussians(f_b, labels, classes)
    for n in candidates:
        ya, yb = raw_a[n], raw_b[n]
        if not (fit_a[ya] and fit_a[yb] and fit_b[ya] and fit_b[yb]):
            continue
        # log N(f; y) <= log k + log N(f; other) <=> N(f; y) <= k N(f; other)
        reject_a = _log_gauss(f_a[n], mean_a[ya], var_a[ya]) <= np.log(k) + _log_gauss(
            f_a[n], mean_a[yb], var_a[yb]
        )
        reject_b = _log_gauss(f_b[n], mean_b[yb], var_b[yb]) <= np.log(k) + _log_gauss(
            f_b[n], mean_b[ya], var_b[ya]
        )
        if reject_b and not reject_a:
            out[n] = ya
        elif reject_a and not reject_b:
            out[n] = yb
    return out
