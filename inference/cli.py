"""``mmfl evaluate | embed | export``: use a trained model from a run folder or an export."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from mmfl import terminal
from mmfl.errors import MmflError
from mmfl.files import atomic_write_bytes, atomic_write_text

console = terminal.console()
RunArg = typer.Argument(..., help="run folder (summary.json, final_model.pt) or export folder")
ManifestArg = typer.Argument(..., help="manifest (CSV or JSONL) whose rows to encode")


def evaluate_cmd(
    run: Path = RunArg,
    manifest: Path = ManifestArg,
    as_json: bool = typer.Option(False, "--json", help="print the metrics as JSON"),
    out: Path | None = typer.Option(None, "--out", help="also write the metrics to this JSON file"),
    pairing: str | None = typer.Option(
        None,
        "--pairing",
        help="row: a row's own items are its right answers; class: every same-label item (needs a "
        "label on every row); default: the model's own pairing",
    ),
) -> None:
    """Retrieval for every modality pair (and class accuracy where labels exist) on MANIFEST."""
    from mmfl.inference.trained import load, load_eval_manifest

    model = load(run)
    result = model.evaluate(load_eval_manifest(manifest, model), pairing)
    result = {"model": model.card.run_id, "manifest": str(manifest), **result}
    text = json.dumps(result, indent=2)
    if out is not None:
        atomic_write_text(out, text + "\n")
    if as_json:
        print(text)
        return
    table = Table(
        title=f"{model.card.run_id} on {manifest.name} ({result['rows']} rows, scored by {result['pairing']})"
    )
    for col in ("query → target", "R@1", "R@5", "R@10", "pair rsum"):
        table.add_column(col, justify="right")
    metrics = result["retrieval"]
    for a, b in model.pairs:
        key = f"{a}-{b}/"
        if key + "rsum" not in metrics:
            continue
        for x, y in ((a, b), (b, a)):
            cells = [f"{metrics[f'{key}{x}2{y}_r{k}']:.1f}" for k in (1, 5, 10)]
            total = f"{metrics[key + 'rsum']:.1f}" if x == a else ""
            table.add_row(f"{x} → {y}", *cells, total)
    console.print(table)
    for m, acc in result["accuracy"].items():
        console.print(f"{m} class accuracy: {acc:.1f} %")
    untrained = [m for m in model.modalities if m not in model.card.trained_heads]
    if model.card.classes and untrained:
        console.print(f"class heads not trained in this run (not reported): {', '.join(untrained)}")


def embed_cmd(
    run: Path = RunArg,
    manifest: Path = ManifestArg,
    out: Path = typer.Option(..., "--out", help="output file: .npz (NumPy) or .parquet"),
) -> None:
    """Write the model's vectors of every row and modality of MANIFEST.

    ``.npz``: arrays ``<modality>`` (rows x embed_dim, float32) and ``<modality>_ids``.
    ``.parquet``: columns ``id``, ``modality``, ``vector`` (list of float32).
    """
    from mmfl.inference.trained import load, load_eval_manifest

    suffix = out.suffix.lower()
    if suffix not in (".npz", ".parquet"):
        raise MmflError(f"--out {out}: use a .npz or .parquet file name")
    model = load(run)
    vectors = model.embed_manifest(load_eval_manifest(manifest, model))
    buffer = io.BytesIO()
    if suffix == ".npz":
        arrays = {}
        for m, (ids, z) in vectors.items():
            arrays[m] = z.astype(np.float32)
            arrays[f"{m}_ids"] = np.asarray(ids)
        np.savez(buffer, **arrays)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        ids = [i for _, (row_ids, _) in vectors.items() for i in row_ids]
        mods = [m for m, (row_ids, _) in vectors.items() for _ in row_ids]
        vecs = [v.astype(np.float32) for _, (_, z) in vectors.items() for v in z]
        table = pa.table(
            {"id": ids, "modality": mods, "vector": pa.array(vecs, type=pa.list_(pa.float32()))},
            metadata={"run_id": model.card.run_id, "embed_dim": str(model.card.embed_dim)},
        )
        pq.write_table(table, buffer)
    atomic_write_bytes(out, buffer.getvalue())
    counts = ", ".join(f"{m} {len(ids)}" for m, (ids, _) in vectors.items())
    console.print(f"wrote {out}: {counts} vectors of {model.card.embed_dim} dimensions")


def export_cmd(
    run: Path = typer.Argument(..., help="run folder (summary.json, final_model.pt)"),
    out: Path | None = typer.Option(None, "--out", help="export folder (default: RUN/export)"),
    force: bool = typer.Option(False, "--force", help="replace an existing export folder"),
    programs: bool = typer.Option(
        True, "--programs/--no-programs", help="also write torch.export programs of the encoders"
    ),
) -> None:
    """Write safetensors weights, a model card and torch.export programs of the encoders."""
    from mmfl.inference.export import export_model
    from mmfl.inference.trained import load

    target = out or run / "export"
    model = load(run)
    export_model(model, target, overwrite=force, programs=programs)
    eps = ", ".join(
        f"{p.site} ε={p.epsilon_spent:.2f}" if p.enabled else f"{p.site} (no DP)" for p in model.card.privacy
    )
    console.print(f"exported {model.card.run_id} to {target}" + (f"; sites: {eps}" if eps else ""))
