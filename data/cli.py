"""``mmfl data``: prepare built-in data sets, validate and fingerprint manifests."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from mmfl import terminal
from mmfl.data.builtin import BUILTIN, open_dataset, prepare
from mmfl.data.manifest import load_manifest
from mmfl.data.prepared import POOL, SPLITS, DatasetInfo, dataset_schema, info_summary, write_prepared
from mmfl.data.sample import Sample
from mmfl.errors import MmflError

app = typer.Typer(
    help="Prepare built-in data sets; validate and fingerprint manifests.", no_args_is_help=True
)
console = terminal.console()


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


NameOpt = typer.Option(None, "--name", help="data set name (default: the output folder's name)")
PairingOpt = typer.Option(
    "instance", "--pairing", help="instance: a row's items belong together; class: same label matches"
)
ImageSizeOpt = typer.Option(64, "--image-size", help="images are fitted into this square (pixels)")
ChannelsOpt = typer.Option(3, "--image-channels", help="3 (RGB) or 1 (grey)")
ForceOpt = typer.Option(False, "--force", help="replace an existing output folder")


def _info(
    name: str, samples: list[Sample], pairing: str, image_size: int, channels: int, notes: list[str]
) -> DatasetInfo:
    """dataset.json for ``samples``: the modalities they hold, their labels as the class list."""
    from pydantic import ValidationError

    from mmfl.modalities import MODALITIES

    try:
        return DatasetInfo(
            name=name,
            description=f"{name}: prepared by mmfl",
            modalities=[m for m in MODALITIES if any(s.has(m) for s in samples)],
            classes=sorted({s.label for s in samples if s.label is not None}),
            pairing=pairing,
            image_size=image_size,
            image_channels=channels,
            notes=notes,
        )
    except ValidationError as exc:
        e = exc.errors()[0]
        field = ".".join(str(p) for p in e["loc"]) or "dataset"
        raise MmflError(f"{field}: {e['msg']}") from None


@app.command("split")
def split_cmd(
    manifest: Path = typer.Argument(..., help="one manifest (CSV or JSONL) holding every row"),
    out: Path = typer.Option(..., "--out", help="the prepared folder to write"),
    public: float = typer.Option(0.3, "--public", help="public set: a ratio (< 1) or a count of units"),
    val: float = typer.Option(0.1, "--val", help="validation: a ratio or a count"),
    test: float = typer.Option(0.2, "--test", help="test: a ratio or a count"),
    sites: int = typer.Option(0, "--sites", help="also cut the private pool into N site manifests"),
    scheme: str = typer.Option("iid", "--scheme", help="sites: iid or dirichlet (over the label)"),
    alpha: float = typer.Option(1.0, "--alpha", help="Dirichlet concentration (small = skewed)"),
    one_answer: bool = typer.Option(
        False, "--one-answer", help="val and test only hold rows whose text occurs once"
    ),
    seed: int = typer.Option(0, "--seed"),
    name: str | None = NameOpt,
    pairing: str = PairingOpt,
    image_size: int = ImageSizeOpt,
    image_channels: int = ChannelsOpt,
    force: bool = ForceOpt,
) -> None:
    """Split one manifest into public / val / test / private (and N sites), by group, and write
    the prepared folder with its dataset.json. Rows sharing a `group` never straddle two parts."""
    from mmfl.data.split import split_samples

    if scheme not in ("iid", "dirichlet"):
        raise MmflError(f"--scheme {scheme!r}: use iid or dirichlet")
    samples = load_manifest(manifest).samples
    parts = split_samples(samples, public, val, test, sites, scheme, alpha, one_answer, seed)  # type: ignore[arg-type]
    notes = [
        f"split of {manifest.name} ({len(samples)} rows) by mmfl data split, seed {seed}, "
        f"public {public}, val {val}, test {test}"
        + (", one answer per text in val/test" if one_answer else "")
    ]
    if sites:
        notes.append(
            f"{sites} site manifests under sites/ ({scheme}"
            + (f", alpha {alpha})" if scheme == "dirichlet" else ")")
        )
    info = _info(name or out.name, samples, pairing, image_size, image_channels, notes)
    site_rows = {f"site-{i + 1}": rows for i, rows in enumerate(parts.sites)}
    ds = write_prepared(
        out,
        {"public": parts.public, "private": parts.private, "val": parts.val, "test": parts.test},
        info,
        site_rows,
        overwrite=force,
    )
    _print_summary(ds)
    for site_id, rows in site_rows.items():
        console.print(f"{site_id}: {len(rows)} rows in {out / 'sites' / (site_id + '.jsonl')}")


@app.command("init")
def init_cmd(
    out: Path = typer.Argument(..., help="the prepared folder to write"),
    public: Path = typer.Option(..., "--public", help="public-set manifest"),
    private: Path = typer.Option(..., "--private", help="private pool manifest (simulation)"),
    val: Path = typer.Option(..., "--val", help="validation manifest"),
    test: Path = typer.Option(..., "--test", help="test manifest"),
    name: str | None = NameOpt,
    pairing: str = PairingOpt,
    image_size: int = ImageSizeOpt,
    image_channels: int = ChannelsOpt,
    force: bool = ForceOpt,
) -> None:
    """Write a prepared folder (dataset.json and the four split manifests) from manifests you
    already split; modalities and the class list are read from the rows."""
    given = {"public": public, "private": private, "val": val, "test": test}
    parts = {split: load_manifest(path).samples for split, path in given.items()}
    everything = [s for rows in parts.values() for s in rows]
    notes = [f"{split} from {path}" for split, path in given.items()]
    info = _info(name or out.name, everything, pairing, image_size, image_channels, notes)
    _print_summary(write_prepared(out, parts, info, overwrite=force))


@app.command("example")
def example_cmd(
    out: Path = typer.Option(Path("."), "--out", help="where to write mine.csv and scans/"),
    items: int = typer.Option(420, "--items", min=20, help="image-caption pairs to copy"),
) -> None:
    """No data of your own yet? Write a small real one laid out as yours would be: OpenClipart
    images in scans/ and mine.csv (id, image, text, label), for docs/own-data.md's walkthrough."""
    from mmfl.data.example import write_example

    manifest = write_example(out, items)
    console.print(
        f"written: {manifest} ({items} images with captions and categories) and {manifest.parent / 'scans'}/"
    )


@app.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of a prepared folder's dataset.json."""
    import json

    print(json.dumps(dataset_schema(), indent=2))


def _print_summary(ds) -> None:  # noqa: ANN001 - PreparedDataset
    summary = info_summary(ds)
    table = Table(title=f"{ds.info.name}: {ds.info.description}")
    table.add_column("split")
    table.add_column("rows", justify="right")
    for mod in ds.info.modalities:
        table.add_column(mod, justify="right")
    table.add_column("manifest")
    for split in [s for s in (*SPLITS, POOL) if s in summary]:
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
