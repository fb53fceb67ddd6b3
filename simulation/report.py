"""The run's report: ``report.md`` and PNG plots from ``summary.json``; and the comparison of
several runs (strategies x seeds)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from mmfl.files import atomic_write_text
from mmfl.protocols.delivery import Delivery, EnsembleRecord
from mmfl.protocols.summary import RunSummary, ServerMetrics, rsum
from mmfl.simulation.paired import paired_lines, paired_rows


def summary_schema() -> dict[str, Any]:
    """The published JSON schema of ``summary.json`` (generated from :class:`RunSummary`)."""
    return json.loads((files("mmfl") / "schemas" / "summary.schema.json").read_text(encoding="utf-8"))


def pair_names(block: Mapping[str, float] | None) -> list[str]:
    """The modality pairs a retrieval block measured (``image-text``, ``image-audio``, ...), in
    its order; the first is the headline (its metrics also appear unprefixed)."""
    return [k.removesuffix("/rsum") for k in (block or {}) if k.endswith("/rsum")]


def pair_rsum(block: Mapping[str, float] | None, pair: str) -> float | None:
    """One modality pair's rsum in a retrieval block."""
    return None if not block else block.get(f"{pair}/rsum")


def round_pair_rsum(metrics: ServerMetrics, pair: str) -> float | None:
    """A round's test rsum of one modality pair."""
    return pair_rsum(metrics.test, pair)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rounds(series: dict[str, list[tuple[int, float]]], ylabel: str, title: str, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def delivery_lines(delivery: Delivery | None) -> list[str]:
    """What the run delivered, and the candidates it chose from (val decides, test reported)."""
    if delivery is None:
        return []
    lines = ["## Delivered", "", f"**{delivery.line}**", ""]
    if len(delivery.candidates) > 1:
        fmt = lambda v: "—" if v is None else f"{v:.1f}"  # noqa: E731
        lines += ["| candidate | built by | val rsum | test rsum | delivered |", "|---|---|---:|---:|---|"]
        for c in delivery.candidates:
            mark = "yes" if c.strategy == delivery.delivered else ""
            who = "the federation" if c.source == "federation" else "the coordinator alone"
            lines.append(f"| {c.strategy} | {who} | {fmt(c.val_rsum)} | {fmt(c.test_rsum)} | {mark} |")
        lines.append("")
    lines += contribution_lines(delivery.ensemble)
    return lines


def contribution_lines(ensemble: EnsembleRecord | None) -> list[str]:
    """Each released site's contribution to the sites' ensemble, leave-one-out on val."""
    if ensemble is None or not ensemble.contributions_val:
        return []
    valued = ensemble.contributions_val
    lines = [
        "Each released site's contribution to the sites' ensemble (leave-one-out on val: a member's "
        "is the ensemble's val rsum minus the ensemble's without it; a left-out site's, what adding "
        "it would change):",
        "",
        "| site | member | contribution, val rsum |",
        "|---|---|---:|",
    ]
    for site, value in sorted(valued.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {site} | {'yes' if site in ensemble.sites else ''} | {value:+.1f} |")
    return [*lines, ""]


def write_report(summary: RunSummary, out: Path) -> Path:
    """``report.md``, ``rsum.png`` and ``bytes.png`` in ``out``."""
    rounds = summary.rounds
    pairs = pair_names(summary.final.retrieval)
    curves = {
        f"{summary.strategy} test": [
            (r.round, v) for r in rounds if (v := rsum(r.server_metrics.test)) is not None
        ],
        f"{summary.strategy} val": [(r.round, v) for r in rounds if (v := rsum(r.server_metrics.val)) is not None],
    }
    if len(pairs) > 1:  # every modality pair, test split
        curves = {
            f"{pair} test": [
                (r.round, v) for r in rounds if (v := round_pair_rsum(r.server_metrics, pair)) is not None
            ]
            for pair in pairs
        } | {f"{pairs[0]} val": curves[f"{summary.strategy} val"]}
    plot_rounds(curves, "rsum", f"server retrieval, {summary.dataset.name}", out / "rsum.png")
    plot_rounds(
        {
            "down": [(r.round, r.bytes_down / 1e6) for r in rounds],
            "up": [(r.round, r.bytes_up / 1e6) for r in rounds],
        },
        "MB",
        "bytes per round",
        out / "bytes.png",
    )
    choice = summary.method_choice
    lines = [
        f"# {summary.name}: {summary.strategy} on {summary.dataset.name}",
        "",
        f"Run `{summary.run_id}`, seed {summary.seed}, {len(rounds)} rounds, "
        f"{summary.wall_seconds:.1f} s; modalities {', '.join(summary.modalities)}, "
        f"representations of dimension {summary.embed_dim}; public set `{summary.dataset.public_fingerprint[:16]}`.",
        "",
        *([f"Method chosen by its shape: **{choice.chosen}** ({choice.why}).", ""] if choice else []),
        *delivery_lines(summary.delivery),
        "## Sites",
        "",
        "| site | modalities | architectures | private samples | device | DP |",
        "|---|---|---|---|---|---|",
    ]
    for site in summary.sites:
        if site.private_samples is None:  # a DP site: only its noisy count left it
            samples = f"≈{site.private_units_noisy or '?'} (ε-DP count)"
        else:
            samples = ", ".join(f"{m} {n}" for m, n in site.private_samples.items())
        archs = ", ".join(f"{m}: {a}" for m, a in site.architectures.items())
        dp = f"ε ≤ {site.privacy.target_epsilon}" if site.privacy.enabled else "off"
        lines.append(
            f"| {site.id} | {', '.join(site.modalities)} | {archs} | {samples} | {site.device.name} | {dp} |"
        )
    extra = pairs[1:]  # the headline pair is the val/test rsum columns
    lines += [
        "",
        "## Rounds",
        "",
        "| round | status | sites accepted | train loss | distill loss | "
        + (f"val {pairs[0]} rsum | test {pairs[0]} rsum | " if extra else "val rsum | test rsum | ")
        + "".join(f"test {p} rsum | " for p in extra)
        + "MB down | MB up | s |",
        "|---|---|---|---|---|---|---|" + "---|" * len(extra) + "---|---|---|",
    ]
    for r in rounds:
        sm = r.server_metrics
        accepted = sum(1 for x in r.sites if x.accepted)
        lines.append(
            f"| {r.round} | {r.status} | {accepted}/{len(r.sites)} | {_fmt(sm.train_loss, 3)} | "
            f"{_fmt(sm.distill_loss, 4)} | {_fmt(rsum(sm.val))} | {_fmt(rsum(sm.test))} | "
            + "".join(f"{_fmt(round_pair_rsum(sm, p))} | " for p in extra)
            + f"{r.bytes_down / 1e6:.2f} | {r.bytes_up / 1e6:.2f} | {r.wall_seconds:.1f} |"
        )
    dropped = [(r.round, x.site_id, x.reason) for r in rounds for x in r.sites if not x.accepted]
    if dropped:
        lines += ["", "Dropped replies:", ""] + [
            f"- round {n}, {site}: {reason}" for n, site, reason in dropped
        ]
    final = summary.final
    lines += ["", "## Final", ""]
    if final.retrieval:
        ret = final.retrieval
        for pair in pairs or [None]:
            prefix = "" if pair is None else f"{pair}/"
            keys = [k for k in ret if k.startswith(prefix) and (pair is not None or "/" not in k)]
            lines += [
                f"Test retrieval, {pair or 'headline'}:",
                "",
                "| " + " | ".join(k.removeprefix(prefix) for k in keys) + " |",
                "|" + "---|" * len(keys),
                "| " + " | ".join(_fmt(ret[k]) for k in keys) + " |",
                "",
            ]
        lines.append(f"Validation rsum {_fmt(final.val_rsum)}; test rsum {_fmt(final.test_rsum)}.")
    if final.site_metrics:
        lines += [
            "",
            "Per-site task metrics (held-out private rows):",
            "",
            "| site | metric | value |",
            "|---|---|---|",
        ]
        for site_id, metrics in sorted(final.site_metrics.items()):
            for k, v in metrics.items():
                if k == "holdout_samples" or (k.startswith("retrieval_") and not k.endswith("rsum")):
                    continue
                lines.append(f"| {site_id} | {k} | {_fmt(v)} |")
    eps = defaultdict(list)
    for r in rounds:
        for x in r.sites:
            if x.epsilon is not None:
                eps[x.site_id].append((r.round, x.epsilon))
    if eps:
        lines += ["", "## Privacy spent (ε after each round)", ""]
        for site_id, pts in eps.items():
            lines.append(f"- {site_id}: " + ", ".join(f"r{n} {e:.3f}" for n, e in pts))
        lines += [
            "",
            "ε is add-or-remove-one DP of a sample (or group) at the site's δ, covering everything the "
            "site sent. DP sites draw noise and batches from OS entropy, so this run cannot be replayed "
            "bit for bit.",
        ]
    lines += ["", "![rsum per round](rsum.png)", "", "![bytes per round](bytes.png)", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def best_val_round(summary: RunSummary) -> tuple[int, float] | None:
    """The round whose server val rsum is highest (the first on ties) and its test rsum."""
    best: tuple[float, int, float] | None = None
    for r in summary.rounds:
        val, test = rsum(r.server_metrics.val), rsum(r.server_metrics.test)
        if val is not None and test is not None and (best is None or val > best[0]):
            best = (val, r.round, test)
    return None if best is None else (best[1], best[2])


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1; 0.0 with one value)."""
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def comparison_table(summaries: Sequence[RunSummary]) -> list[dict[str, Any]]:
    """One row per strategy: mean and sample std (ddof 1) over seeds of the test and val rsum
    after the last round and of the test rsum at each run's best-val round, and the mean of
    each site metric."""
    by: dict[str, list[RunSummary]] = defaultdict(list)
    for s in summaries:
        by[s.strategy].append(s)
    rows = []
    for strategy, runs in by.items():
        test = [v for r in runs if (v := r.final.test_rsum) is not None]
        val = [v for r in runs if (v := r.final.val_rsum) is not None]
        best = [b for r in runs if (b := best_val_round(r)) is not None]
        site_values: dict[str, list[float]] = defaultdict(list)
        for r in runs:
            for site, metrics in r.final.site_metrics.items():
                for k, v in metrics.items():
                    if v is not None and (k.endswith("accuracy") or k == "retrieval_rsum"):
                        site_values[f"{site}/{k}"].append(v)
        pair_tests = {
            pair: _mean_std(
                [t for r in runs if (t := pair_rsum(r.final.retrieval, pair)) is not None]
            )
            for pair in pair_names(runs[0].final.retrieval)
        }
        test_mean, test_std = _mean_std(test)
        val_mean, val_std = _mean_std(val)
        best_mean, best_std = _mean_std([t for _, t in best])
        rows.append(
            {
                "strategy": strategy,
                "seeds": [r.seed for r in runs],
                "test_rsum_mean": test_mean,
                "test_rsum_std": test_std,
                "val_rsum_mean": val_mean,
                "val_rsum_std": val_std,
                "best_val_test_rsum_mean": best_mean,
                "best_val_test_rsum_std": best_std,
                "best_val_rounds": [n for n, _ in best],
                "pairs": {k: {"test_rsum_mean": m, "test_rsum_std": sd} for k, (m, sd) in pair_tests.items()},
                "site_metrics": {
                    k: dict(zip(("mean", "std"), _mean_std(v), strict=True)) for k, v in site_values.items()
                },
                "wall_seconds_mean": float(np.mean([r.wall_seconds for r in runs])),
                "bytes_per_round_mean": float(np.mean([x.bytes_down + x.bytes_up for r in runs for x in r.rounds])),
            }
        )
    return rows


def write_comparison(summaries: Sequence[RunSummary], out: Path) -> Path:
    """``comparison.json``, ``comparison.md`` and ``rsum.png`` (mean test rsum per round)."""
    rows = comparison_table(summaries)
    atomic_write_text(out / "comparison.json", json.dumps(rows, indent=2))
    curves: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in summaries:
        for r in s.rounds:
            v = rsum(r.server_metrics.test)
            if v is not None:
                curves[s.strategy][r.round].append(v)
    plot_rounds(
        {k: sorted((n, float(np.mean(v))) for n, v in c.items()) for k, c in curves.items()},
        "test rsum (mean over seeds)",
        "server retrieval per round",
        out / "rsum.png",
    )
    dataset = summaries[0].dataset.name if summaries else "?"
    lines = [
        f"# Comparison on {dataset}",
        "",
        "| strategy | seeds | test rsum, last round | test rsum, best-val round | val rsum | MB per round | s per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        test = "—" if r["test_rsum_mean"] is None else f"{r['test_rsum_mean']:.1f} ± {r['test_rsum_std']:.1f}"
        val = "—" if r["val_rsum_mean"] is None else f"{r['val_rsum_mean']:.1f} ± {r['val_rsum_std']:.1f}"
        best = (
            "—"
            if r["best_val_test_rsum_mean"] is None
            else f"{r['best_val_test_rsum_mean']:.1f} ± {r['best_val_test_rsum_std']:.1f}"
        )
        lines.append(
            f"| {r['strategy']} | {len(r['seeds'])} | {test} | {best} | {val} | {r['bytes_per_round_mean'] / 1e6:.2f} | {r['wall_seconds_mean']:.0f} |"
        )
    pairs = list(dict.fromkeys(p for r in rows for p in r["pairs"]))
    if len(pairs) > 1:
        lines += ["", "Test rsum of every modality pair, last round (mean ± sample std over seeds):", ""]
        lines.append("| strategy | " + " | ".join(pairs) + " |")
        lines.append("|---|" + "---|" * len(pairs))
        for r in rows:
            cells = [
                "—"
                if (c := r["pairs"].get(p)) is None or c["test_rsum_mean"] is None
                else f"{c['test_rsum_mean']:.1f} ± {c['test_rsum_std']:.1f}"
                for p in pairs
            ]
            lines.append(f"| {r['strategy']} | " + " | ".join(cells) + " |")
    site_keys = sorted({k for r in rows for k in r["site_metrics"]})
    if site_keys:
        lines += ["", "Per-site task metrics (mean ± sample std over seeds):", ""]
        lines.append("| metric | " + " | ".join(r["strategy"] for r in rows) + " |")
        lines.append("|---|" + "---|" * len(rows))
        for k in site_keys:
            cells = [
                f"{r['site_metrics'][k]['mean']:.1f} ± {r['site_metrics'][k]['std']:.1f}"
                if k in r["site_metrics"]
                else "—"
                for r in rows
            ]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    paired = compare_with_site_free(summaries)
    if paired:
        lines += ["", *paired_lines(paired)]
    atomic_write_text(out / "comparison-paired.json", json.dumps(paired, indent=2))
    lines += ["", "![test rsum per round](rsum.png)", ""]
    path = out / "comparison.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def site_free_method(name: str) -> bool:
    """A method that uses no site's data: ``server-only`` and every method's control."""
    from mmfl.strategies.methods import METHODS  # torch: not on the command line's start path

    return name == "server-only" or (name in METHODS and METHODS[name].control_of is not None)


def federated_method(name: str) -> bool:
    """A method whose sites take part and that ends with a server model."""
    from mmfl.strategies.methods import METHODS

    return name in METHODS and METHODS[name].uses_sites and METHODS[name].has_server_model


def compare_with_site_free(summaries: Sequence[RunSummary]) -> list[dict[str, Any]]:
    """Every federation of the comparison against every site-free run in it (server-only and
    the methods' controls), paired by seed (:func:`~mmfl.simulation.paired.paired_rows`)."""
    rows = [s.model_dump(mode="json", include={"strategy", "seed", "final"}) for s in summaries]
    return paired_rows(rows, site_free_method, federated_method)
