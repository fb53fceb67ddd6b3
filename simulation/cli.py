"""``mmfl simulate``: a whole federation on one machine, with progress, a table, a report."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mmfl import terminal
from mmfl.config import METHOD_SETTINGS, FederationSpec, SiteSpec, dump_toml, load_config
from mmfl.errors import MmflError
from mmfl.protocols.summary import SUMMARY_FILE, RunSummary, rsum
from mmfl.simulation.report import (
    compare_with_site_free,
    comparison_table,
    pair_names,
    round_pair_rsum,
    write_comparison,
    write_report,
)
from mmfl.simulation.tracking import RunTracker, parse_backends, view_commands

app = typer.Typer(help="Run a federation on one machine (researchers).", invoke_without_command=True)
console = terminal.console(stderr=True)
ENGINES = ("flower", "inprocess")

ConfigOpt = typer.Option(None, "--config", "-c", help="federation spec (TOML); defaults: digits, six sites")
SetOpt = typer.Option(None, "--set", "-s", help="override a spec key, e.g. --set rounds=8 (repeatable)")
EngineOpt = typer.Option("flower", "--engine", help="flower (Flower's simulation engine) or inprocess")
TrackingOpt = typer.Option(
    None,
    "--tracking",
    envvar="MMFL_TRACKING",
    help="also log rounds, config and model card to tensorboard and/or mlflow (repeatable or "
    "comma-separated; default none), in OUT/tracking/",
)


def _spec(config: Path | None, overrides: list[str] | None, **fields: Any) -> FederationSpec:
    extra = [f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in fields.items() if v is not None]
    return load_config(FederationSpec, config, [*(overrides or []), *extra])


class RoundProgress:
    """Rich progress: one bar over rounds; the line shows sites done, loss, rsum and bytes."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress = progress
        self.label = label
        self.task = progress.add_task(label, total=None, status="starting")
        # Without a terminal (a job scheduler, nohup, a pipe) rich draws nothing until the end:
        # write one plain line per round instead.
        self.plain = not progress.console.is_terminal
        self.total: int | None = None

    def _line(self, text: str) -> None:
        if self.plain:
            self.progress.console.print(f"{self.label}: {text}", highlight=False, soft_wrap=True)

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            self.total = event["rounds"]
            self.progress.update(
                self.task, total=event["rounds"], status=f"{len(event['sites'])} sites registered"
            )
            self._line(f"started, {event['rounds']} rounds, {len(event['sites'])} sites registered")
        elif kind == "round-start":
            self.progress.update(self.task, status=f"round {event['round']}: server training")
        elif kind == "sites":
            self.progress.update(
                self.task, status=f"round {event['round']}: sites {event['done']}/{event['total']}"
            )
        elif kind == "round":
            sm = event["server"]
            test_rsum = (sm.get("test") or {}).get("rsum")
            loss = sm.get("train_loss")
            accepted = sum(1 for s in event["sites"] if s["accepted"])
            mb = (event["bytes_down"] + event["bytes_up"]) / 1e6
            parts = [f"round {event['round']} {event['status']}", f"sites {accepted}/{len(event['sites'])}"]
            if loss is not None:
                parts.append(f"loss {loss:.3f}")
            if test_rsum is not None:
                parts.append(f"rsum {test_rsum:.1f}")
            parts.append(f"{mb:.1f} MB")
            self.progress.update(self.task, advance=1, status=", ".join(parts))
            self._line(", ".join(parts) + f" ({event['round']}/{self.total})")
        elif kind in ("site-refused", "site-error", "round-failed", "privacy-rollback", "privacy-locked"):
            self.progress.console.print(f"[yellow]{event['message']}[/yellow]")
        elif kind == "control-start":
            status = f"building the site-free control {event['strategy']}"
            self.progress.update(self.task, status=status)
            self._line(status)
        elif kind == "control-done":
            val, test = event.get("val_rsum"), event.get("test_rsum")
            fmt = lambda v: "—" if v is None else f"{v:.1f}"  # noqa: E731
            self._line(f"control {event['strategy']}: val rsum {fmt(val)}, test rsum {fmt(test)}")
        elif kind == "control-failed":
            self.progress.console.print(f"[yellow]{event['message']}[/yellow]")
        elif kind == "method":
            self.progress.update(self.task, status=event["message"])
            self._line(event["message"])
        elif kind == "delivered":
            self.progress.update(self.task, status=event["message"])
            self._line(event["message"])
        elif kind == "finish":
            self._line(f"finished in {event['wall_seconds']:.1f} s")


def run_one(
    spec: FederationSpec,
    engine: str,
    out: Path | None,
    store: str | None,
    force: bool,
    progress: Progress,
    ray_address: str | None = None,
    on_plan: Callable[[Path], None] | None = None,
    tracking: tuple[str, ...] = (),
    tracking_root: Path | None = None,
) -> tuple[RunSummary, Path]:
    """Run one spec; with ``tracking`` backends, log it as it runs into ``tracking_root``
    (default: the run's ``tracking`` folder)."""
    if engine not in ENGINES:
        raise MmflError(f"unknown engine {engine!r} (choose {' or '.join(ENGINES)})")
    if ray_address and engine != "flower":
        raise MmflError("--ray-address runs on Flower's simulation engine: use --engine flower")
    # Imported here: they pull in torch, which ``mmfl --help`` does not need.
    from mmfl.simulation.engines import run_flower, run_inprocess
    from mmfl.simulation.plan import build_plan

    # The first line within about a second: the plan (data, partitions, site manifests) and the
    # sites' features can take a minute before the first round.
    progress.console.print(
        f"{spec.name}: {spec.strategy} on {spec.dataset}, {len(spec.sites)} sites, {spec.rounds} rounds, "
        f"seed {spec.seed}: preparing the data and the plan",
        highlight=False,
        soft_wrap=True,
    )
    started = time.perf_counter()
    plan = build_plan(spec, out, store, force)
    progress.console.print(
        f"{plan.run_id}: plan ready in {time.perf_counter() - started:.1f} s; the sites load their data",
        highlight=False,
        soft_wrap=True,
    )
    if on_plan is not None:
        on_plan(Path(plan.output_dir))
    run_dir = Path(plan.output_dir)
    spec = plan.spec  # the method resolved where the spec asked for auto
    with RunTracker(tracking, tracking_root or run_dir / "tracking", spec, plan.run_id, run_dir) as tracker:
        watcher = tracker.watch(RoundProgress(progress, f"{spec.strategy} s{spec.seed}"))
        summary = (
            run_flower(plan, watcher, ray_address=ray_address)
            if engine == "flower"
            else run_inprocess(plan, watcher)
        )
        write_report(summary, run_dir)
        tracker.finish(summary)
    return summary, run_dir


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    )


def print_summary(summary: RunSummary, out: Path) -> None:
    pairs = pair_names(summary.final.retrieval)
    extra = pairs[1:]  # beyond the headline pair (the rsum columns)
    table = Table(title=f"{summary.strategy} on {summary.dataset.name} (seed {summary.seed})")
    headline = f" ({pairs[0]})" if extra else ""
    for col in ("round", "status", "sites", "train loss", f"val rsum{headline}", f"test rsum{headline}"):
        table.add_column(col, justify="right")
    for pair in extra:
        table.add_column(f"test {pair}", justify="right")
    for col in ("MB down", "MB up", "s"):
        table.add_column(col, justify="right")
    for r in summary.rounds:
        sm = r.server_metrics
        fmt = lambda v, d=1: "—" if v is None else f"{v:.{d}f}"  # noqa: E731
        table.add_row(
            str(r.round),
            r.status,
            f"{sum(s.accepted for s in r.sites)}/{len(r.sites)}",
            fmt(sm.train_loss, 3),
            fmt(rsum(sm.val)),
            fmt(rsum(sm.test)),
            *(fmt(round_pair_rsum(sm, pair)) for pair in extra),
            f"{r.bytes_down / 1e6:.2f}",
            f"{r.bytes_up / 1e6:.2f}",
            f"{r.wall_seconds:.1f}",
        )
    terminal.console().print(table)
    final = summary.final
    if final.retrieval:
        ret = final.retrieval
        for pair in pairs or [""]:
            prefix = f"{pair}/" if pair else ""
            shown = {
                k.removeprefix(prefix): v
                for k, v in ret.items()
                if k.startswith(prefix) and "/" not in k.removeprefix(prefix)
            }
            terminal.console().print(
                f"final test retrieval{' ' + pair if pair else ''}: "
                + ", ".join(f"{k} {v:.1f}" for k, v in shown.items())
            )
    for site, metrics in sorted(final.site_metrics.items()):
        shown = {
            k: v
            for k, v in metrics.items()
            if (k.endswith("accuracy") or k == "retrieval_rsum") and v is not None
        }
        if not shown:
            continue
        terminal.console().print(
            f"site {site}: " + ", ".join(f"{k} {v:.1f}" for k, v in shown.items() if v is not None)
        )
    terminal.console().print(f"wall time {summary.wall_seconds:.1f} s; report: {out / 'report.md'}")


@app.callback()
def simulate(
    ctx: typer.Context,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
    strategy: str | None = typer.Option(
        None,
        "--strategy",
        help="auto (the default: chosen from the sites' shape, printed with why) | cream | cream+ | mean | fedavg | fedavg-public | fedprox | fedavgm | server-only | local | centralized | site-free | public-teachers | regress | regress-public",
    ),
    engine: str = EngineOpt,
    seed: int | None = typer.Option(None, "--seed"),
    rounds: int | None = typer.Option(None, "--rounds"),
    out: Path | None = typer.Option(
        None, "--out", help="output folder (default: runs/NAME-STRATEGY-sSEED-TIME)"
    ),
    store: str | None = typer.Option(
        None, "--store", help="run store URL or SQLite path (default: OUT/runs.sqlite)"
    ),
    force: bool = typer.Option(False, "--force", help="reuse an output folder that already holds a run"),
    controls: bool = typer.Option(
        True,
        "--controls/--no-controls",
        help="also build the site-free controls (server-only and site-free, or regress-public for "
        "regress) and deliver the better on val (--no-controls: delivery.select = false)",
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        help="run the sites on an existing Ray cluster (HOST:PORT of its head; Ray's own RAY_ADDRESS); "
        "its nodes need this mmfl and the run folder at the same paths",
    ),
    tracking: list[str] | None = TrackingOpt,
    console_on: bool = typer.Option(
        False,
        "--console",
        help="serve the read-only operator console of this run on 127.0.0.1 while it runs (and after, "
        "until Ctrl-C)",
    ),
    console_port: int = typer.Option(8787, "--console-port", min=1, max=65535),
) -> None:
    """Run one federation (the default: digits, six sites of three kinds; the method chosen from
    their shape, regress there, in which the two paired ones take part), and beside it the servers that use no site at all, so that the
    table shows what the sites added."""
    if ctx.invoked_subcommand is not None:
        return
    backends = parse_backends(tracking)
    spec = _spec(config, set_, strategy=strategy, seed=seed, rounds=rounds)
    if not controls:
        spec = spec.model_copy(update={"delivery": spec.delivery.model_copy(update={"select": False})})
    served: list[Any] = []

    def open_console(folder: Path) -> None:
        if console_on and not served:
            from mmfl.server.console.cli import serve_folder

            served.append(serve_folder(folder, console_port))

    with _progress() as progress:
        summary, run_dir = run_one(
            spec, engine, out, store, force, progress, ray_address, open_console, tracking=backends
        )
    print_summary(summary, run_dir)
    others = control_summaries(summary, run_dir)
    if others:
        print_controls(summary, others)
    delivery = summary.delivery
    if delivery is not None:
        terminal.console().print(delivery.line, highlight=False, soft_wrap=True)
    valued = delivery.ensemble.contributions_val if delivery and delivery.ensemble else {}
    if valued:
        parts = ", ".join(f"{site} {v:+.1f}" for site, v in sorted(valued.items(), key=lambda kv: -kv[1]))
        terminal.console().print(
            f"each released site's contribution to the sites' ensemble (val rsum, leave-one-out): {parts}",
            highlight=False,
            soft_wrap=True,
        )
    print_tracking(backends, run_dir / "tracking")
    if served:
        from mmfl.server.console.cli import keep_serving

        keep_serving(served[0])


def control_summaries(summary: RunSummary, run_dir: Path) -> list[RunSummary]:
    """The summaries of the site-free controls the run built for its delivery."""
    candidates = summary.delivery.candidates if summary.delivery else []
    return [
        RunSummary.read(run_dir / c.folder)
        for c in candidates
        if c.source == "control" and (run_dir / c.folder / SUMMARY_FILE).exists()
    ]


def print_tracking(backends: tuple[str, ...], root: Path) -> None:
    """Where the tracked runs went and how to open them."""
    for command in view_commands(backends, root):
        terminal.console().print(f"tracking: {command}", highlight=False, soft_wrap=True)


def print_controls(summary: RunSummary, controls: list[RunSummary]) -> None:
    """The federation next to the servers that use no site, on the same seed."""
    table = Table(title=f"what the sites added (seed {summary.seed}; benchmarks/quality/quality.py pairs 5 seeds)")
    extra = pair_names(summary.final.retrieval)[1:]
    for col in (
        "server",
        "val rsum",
        "test rsum",
        *(f"test {p}" for p in extra),
        "test mAP",
        f"test rsum − {controls[-1].strategy}",
    ):
        table.add_column(col, justify="right")
    reference = controls[-1].final.test_rsum
    for s in [summary, *controls]:
        test = s.final.retrieval or {}
        val = s.final.val_retrieval or {}
        diff = "—" if reference is None or "rsum" not in test else f"{test['rsum'] - reference:+.1f}"
        table.add_row(
            s.strategy,
            f"{val.get('rsum', float('nan')):.1f}",
            f"{test.get('rsum', float('nan')):.1f}",
            *(f"{test.get(f'{p}/rsum', float('nan')):.1f}" for p in extra),
            "—" if "map" not in test else f"{test['map']:.1f}",
            diff,
        )
    terminal.console().print(table)


@app.command("compare")
def compare(
    strategies: str = typer.Option(
        "cream,cream+,mean,server-only,site-free,centralized", "--strategies", help="comma-separated"
    ),
    seeds: str = typer.Option("0,1,2", "--seeds", help="comma-separated"),
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
    engine: str = typer.Option("inprocess", "--engine"),
    out: Path = typer.Option(Path("runs/compare"), "--out"),
    force: bool = typer.Option(False, "--force"),
    tracking: list[str] | None = TrackingOpt,
) -> None:
    """Run several strategies and seeds on the same spec; write one comparison table."""
    backends = parse_backends(tracking)
    out.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{(out / 'runs.sqlite').resolve()}"
    summaries = []
    with _progress() as progress:
        for name in [s.strip() for s in strategies.split(",") if s.strip()]:
            for seed in [int(x) for x in seeds.split(",") if x.strip()]:
                spec = _spec(config, set_, strategy=name, seed=seed)
                # a comparison runs the site-free servers it names itself: no per-run selection
                spec = spec.model_copy(
                    update={"delivery": spec.delivery.model_copy(update={"select": False})}
                )
                run_dir = out / f"{name.replace('+', 'plus')}-s{seed}"
                summaries.append(
                    run_one(
                        spec,
                        engine,
                        run_dir,
                        store,
                        force,
                        progress,
                        tracking=backends,
                        tracking_root=out / "tracking",
                    )[0]
                )
    write_comparison(summaries, out)
    table = Table(title="comparison (final test rsum, mean ± sample std over seeds)")
    rows = comparison_table(summaries)
    pairs = list(dict.fromkeys(p for r in rows for p in r["pairs"]))
    extra = pairs[1:]
    for col in ("strategy", "seeds", "test rsum", "val rsum", *(f"test {p}" for p in extra)):
        table.add_column(col)
    for row in rows:
        fmt = lambda m, s: "—" if m is None else f"{m:.1f} ± {s:.1f}"  # noqa: E731
        cells = [row["pairs"].get(p, {"test_rsum_mean": None, "test_rsum_std": None}) for p in extra]
        table.add_row(
            row["strategy"],
            str(len(row["seeds"])),
            fmt(row["test_rsum_mean"], row["test_rsum_std"]),
            fmt(row["val_rsum_mean"], row["val_rsum_std"]),
            *(fmt(c["test_rsum_mean"], c["test_rsum_std"]) for c in cells),
        )
    terminal.console().print(table)
    for p in compare_with_site_free(summaries):
        if p["strongest_by_val"]:
            ci = "" if p["ci_low"] is None else f", 95 % [{p['ci_low']:+.1f}, {p['ci_high']:+.1f}]"
            terminal.console().print(
                f"{p['treated']} − {p['control']} (the strongest site-free run by val): "
                f"{p['mean']:+.1f} test rsum over {len(p['seeds'])} seed{'s' if len(p['seeds']) != 1 else ''}{ci}",
                highlight=False,
                soft_wrap=True,
            )
    terminal.console().print(f"written: {out / 'comparison.md'}")
    print_tracking(backends, out / "tracking")


@app.command("init")
def init(config: Path | None = ConfigOpt, set_: list[str] | None = SetOpt) -> None:
    """Print a complete federation spec (the defaults, or CONFIG with overrides) as TOML; keys
    that are unset (TOML has no null) are listed first as comments."""
    spec = _spec(config, set_)
    unset = [
        f"# {name} = ...   unset: {field.description or 'no value'}"
        for name, field in FederationSpec.model_fields.items()
        if getattr(spec, name) is None
    ]
    site_fields = SiteSpec.model_fields
    unset += [
        f"# sites.*.{name} = ...   unset where not given: {field.description or 'no value'}"
        for name, field in site_fields.items()
        if any(getattr(site, name) is None for site in spec.sites)
    ]
    # A method fills the cream and fedavg keys a spec leaves unset with its own settings (cream+'s
    # temperature, fedavgm's momentum): written out, they would override them. They are listed.
    for section in METHOD_SETTINGS:
        given = getattr(spec, section)
        unset += [
            f"# {section}.{name} = {json.dumps(value)}   unset: the method's own setting applies, else this"
            for name, value in given.model_dump(mode="json", exclude_none=True).items()
            if name not in given.model_fields_set
        ]
    print("\n".join(unset) + ("\n" if unset else "") + dump_toml(spec, METHOD_SETTINGS))
