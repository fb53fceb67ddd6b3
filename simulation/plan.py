"""Turn a federation spec into a run plan: partition the private pool, write each site's
manifest and configuration, and the plan the ServerApp reads."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from mmfl.config import FederationSpec, RunPlan, SiteConfig, dump_toml
from mmfl.data.builtin import open_dataset
from mmfl.data.manifest import load_manifest, write_manifest
from mmfl.data.partition import drop_modalities, partition_dirichlet, partition_iid
from mmfl.data.prepared import PreparedDataset, check_labels
from mmfl.data.sample import FILE_MODALITIES, Sample
from mmfl.errors import MmflError
from mmfl.files import atomic_write_text
from mmfl.server.store import store_url
from mmfl.strategies.choice import SiteShape, choose_method, public_pairs
from mmfl.strategies.methods import method_of


def default_output_dir(spec: FederationSpec) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    strategy = spec.strategy.replace("+", "plus")
    return Path("runs") / f"{spec.name}-{strategy}-s{spec.seed}-{stamp}"


def check_architectures(spec: FederationSpec) -> None:
    """Every named architecture exists and encodes the modality it is given for."""
    from mmfl.models.encoders import architecture

    named = [("server", m, a) for m, a in spec.server.architectures.items()]
    named += [(f"site {s.id}", m, a) for s in spec.sites for m, a in s.architectures.items()]
    for owner, modality, name in named:
        try:
            architecture(name, modality)
        except ValueError as exc:
            raise MmflError(f"{owner}: {exc}") from None


def public_copies(spec: FederationSpec, ds: PreparedDataset) -> list[list[Sample]]:
    """Each site's copy of the public set, holding only the site's own modalities (the
    ``public-teachers`` control: sites that know nothing the coordinator does not)."""
    out = []
    for site in spec.sites:
        rows = [
            Sample(s.id, {m: v for m, v in s.values.items() if m in site.modalities}, s.label, s.group)
            for s in ds.public_set(spec.public_pool).samples
            if any(m in s.values for m in site.modalities)
        ]
        out.append(rows)
    return out


def folder_holding(samples: list[Sample], fallback: Path) -> Path:
    """The deepest folder holding every file the samples name (symlinks resolved): a simulated
    site's explicit data root, since here one researcher is coordinator and site alike."""
    folders = {
        str(Path(v).resolve().parent) for s in samples for m, v in s.values.items() if m in FILE_MODALITIES
    }
    return Path(os.path.commonpath(sorted(folders))) if folders else fallback


def partition_sites(spec: FederationSpec, ds: PreparedDataset) -> list[list[Sample]]:
    """Each site's private samples, holding only the site's own modalities: a site with its own
    ``manifest`` holds its rows; the others share the data set's private pool."""
    pooled = [s for s in spec.sites if s.manifest is None]
    parts: dict[str, list[Sample]] = {}
    if pooled:
        pool = ds.manifest("private")
        rng = np.random.default_rng([spec.seed, 101])
        shares = [s.share for s in pooled]
        p = spec.partition
        if p.scheme == "iid":
            cuts = partition_iid(len(pool), shares, rng)
        else:
            if any(label is None for label in pool.labels):
                raise MmflError(
                    "partition.scheme = 'dirichlet' needs a label on every private row; use 'iid'"
                )
            cuts = partition_dirichlet(pool.labels, shares, p.alpha, rng, p.min_samples)
        for site, cut in zip(pooled, cuts, strict=True):
            samples = [pool.samples[i] for i in cut]
            seen = drop_modalities(
                [set(s.values) for s in samples], site.modalities, p.missing_modality_rate, rng
            )
            parts[site.id] = [
                Sample(s.id, {m: s.values[m] for m in sorted(mods)}, s.label, s.group)
                for s, mods in zip(samples, seen, strict=True)
                if mods
            ]
    for site in spec.sites:
        if site.manifest is not None:
            own = load_manifest(site.manifest, ds.info.modalities)
            check_labels(own, ds.info.classes)
            parts[site.id] = [
                Sample(s.id, {m: v for m, v in s.values.items() if m in site.modalities}, s.label, s.group)
                for s in own.samples
                if any(m in s.values for m in site.modalities)
            ]
    for site in spec.sites:
        if not parts[site.id]:
            raise MmflError(f"site {site.id} received no samples holding {site.modalities}")
    return [parts[site.id] for site in spec.sites]


def build_plan(
    spec: FederationSpec, output_dir: Path | None = None, store: str | None = None, force: bool = False
) -> RunPlan:
    """Write the run's folder (site manifests and configs, plan.json, spec.toml); return the plan."""
    check_architectures(spec)
    choice = None
    ds = open_dataset(spec.data_dir or spec.dataset)
    if spec.strategy == "auto":
        shapes = [
            SiteShape(modalities=list(s.modalities), architectures=dict(s.architectures)) for s in spec.sites
        ]
        pairs = public_pairs(ds.public_set(spec.public_pool).samples, spec.modalities)
        choice = choose_method(spec.modalities, shapes, pairs)
        spec = spec.model_copy(update={"strategy": choice.chosen})
    if "name" not in spec.model_fields_set:  # the default name follows the data actually used
        spec = spec.model_copy(
            update={
                "name": (re.sub(r"[^A-Za-z0-9_.-]+", "-", ds.info.name).strip("-._")[:50] or "data")
                + "-default"
            }
        )
    out = Path(output_dir or default_output_dir(spec)).resolve()
    if (out / "plan.json").exists() and not force:
        raise MmflError(f"output folder {out} already holds a run; choose another --out or pass --force")
    missing = [m for m in spec.modalities if m not in ds.info.modalities]
    if missing:
        raise MmflError(f"data set {ds.info.name} has no {missing[0]} modality (it has {ds.info.modalities})")
    method = method_of(spec.strategy)
    private = [s.id for s in spec.sites if s.privacy.enabled]
    if method.server_data == "public+sites" and private:
        raise MmflError(
            f"{spec.strategy} pools the sites' rows at the server, outside any DP guarantee, but site "
            f"{private[0]} has privacy.enabled: a DP site's rows never leave it (run the federation instead)"
        )
    out.mkdir(parents=True, exist_ok=True)
    site_configs: list[SiteConfig] = []
    if method.needs_site_data and spec.sites:
        public_root = folder_holding(ds.public_set(spec.public_pool).samples, ds.root)
        pool = ds.root / "pool.jsonl" if spec.public_pool and ds.has_pool else None
        taking_part = method.site_architectures(spec)
        held = public_copies(spec, ds) if method.site_data == "public" else partition_sites(spec, ds)
        for site, rows in zip(spec.sites, held, strict=True):
            if site.id not in taking_part:
                continue  # e.g. FedAvg: weights average only between paired sites of one model
            site = site.model_copy(update={"architectures": taking_part[site.id]})
            folder = out / "sites" / site.id
            manifest = write_manifest(folder / "data.jsonl", rows)
            site_configs.append(
                SiteConfig(
                    site=site,
                    train=spec.train_for(site),
                    manifest=manifest,
                    public_manifest=ds.root / "public.jsonl",
                    public_pool=pool,
                    public_root=public_root,
                    data_root=folder_holding(rows, folder),
                    state_dir=folder / "state",
                    embed_dim=spec.embed_dim,
                    seed=spec.seed,
                    threads=1,
                )
            )
    configs_path = out / "site_configs.json"
    atomic_write_text(configs_path, json.dumps([c.model_dump(mode="json") for c in site_configs], indent=2))
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    plan = RunPlan(
        run_id=f"{spec.name}-{spec.strategy.replace('+', 'plus')}-s{spec.seed}-{stamp}",
        spec=spec,
        dataset_root=ds.root,
        output_dir=out,
        store_url=store or store_url(out / "runs.sqlite"),
        site_configs=configs_path if site_configs else None,
        expected_sites=len(site_configs) if method.uses_sites else 0,
        method_choice=choice,
        threads=torch.get_num_threads(),
    )
    atomic_write_text(out / "spec.toml", dump_toml(spec))
    atomic_write_text(out / "plan.json", plan.to_json())
    return plan
