"""``mmfl data``: prepare built-in data sets, validate and fingerprint manifests."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mmfl.data.builtin import BUILTIN, open_dataset, prepare
from mmfl.data.manifest import load_manifest
from mmfl.data.prepared import SPLITS, info_summary

app = typer.Typer(
    help="Prepare built-in data sets; validate and fingerprint manifests.", no_args_is_help=True
)
console = Console()


@app.command("prepare")
def prepare_cmd(
    name: str = typer.Argument(..., help=f"built-in data set: {', '.join(BUILTIN)}"),
    out: Path | None = typer.Option(None, "--out", help="target folder (default: $MMFL_HOME/data/NAME)"),
    source: Path | None = typer.Option(None, "--source", help="openclipart: installed files root"),
    force: bool = typer.Option(False, "--force", help="prepare again even if already prepared"),
    seed: int = typer.Option(0, "--seed", help="seed of the split"),
) -> None:
    """Turn a built-in data set's installed files into manifests and a stated split."""
    kwargs: dict[str, object] = {"seed": seed}
    if source is not None:
        if name != "openclipart":
            raise typer.BadParameter("--source applies to openclipart only")
        kwargs["source"] = source
    ds = prepare(name, out, force=force, **kwargs)
    _print_summary(ds)


@app.command("info")
def info_cmd(dataset: str = typer.Argument(..., help="built-in name or prepared folder")) -> None:
    """Show a prepared data set's split, modalities and notes."""
    _print_summary(open_dataset(dataset, auto_prepare=False))


@app.command("validate")
def validate_cmd(
    manifest: Path,
    require_label: bool = typer.Option(False, "--require-label", help="refuse rows without a label"),
) -> None:
    """Validate every row of a manifest (CSV or JSONL); exit 2 naming the bad rows."""
    m = load_manifest(manifest, require_label=require_label)
    counts = ", ".join(f"{mod} {m.count(mod)}" for mod in m.modalities)
    console.print(f"ok: {len(m)} rows ({counts}); fingerprint {m.fingerprint()}")


@app.command("fingerprint")
def fingerprint_cmd(manifest: Path) -> None:
    """Print the content fingerprint of a manifest and the files it names."""
    print(load_manifest(manifest).fingerprint())


def _print_summary(ds) -> None:  # noqa: ANN001 - PreparedDataset
    summary = info_summary(ds)
    table = Table(title=f"{ds.info.name}: {ds.info.description}")
    table.add_column("split")
    table.add_column("rows", justify="right")
    for mod in ds.info.modalities:
        table.add_column(mod, justify="right")
    table.add_column("manifest")
    for split in SPLITS:
        row = summary[split]
        table.add_row(
            split,
            str(row["rows"]),
            *[str(row[m]) for m in ds.info.modalities],
            str(ds.root / f"{split}.jsonl"),
        )
    console.print(table)
    console.print(f"pairing: {ds.info.pairing}; classes: {len(ds.info.classes)}")
    for note in ds.info.notes:
        console.print(f"- {note}")
