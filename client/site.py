"""One site: its private data, the public set, its model, and what it does per message."""

from __future__ import annotations

import copy
import itertools
import json
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any

import numpy as np
import torch

from mmfl.client.budget import PrivacyBudget, PrivacyRefusal, RoundPlan
from mmfl.client.ledger import LedgerError
from mmfl.client.state import SiteState
from mmfl.client.training import PublicRound, encode_rows, public_loss, train_round
from mmfl.config import SiteConfig
from mmfl.data.builtin import DatasetInfo
from mmfl.data.fingerprint import sample_key
from mmfl.data.manifest import Manifest, load_manifest
from mmfl.data.partition import holdout_split, site_seed
from mmfl.data.tensors import Tensors, featurizers_for, load_tensors
from mmfl.errors import MmflError
from mmfl.models.metrics import accuracy, retrieval_metrics
from mmfl.models.multimodal import MultiEncoder, batches
from mmfl.paths import feature_cache_root
from mmfl.protocols.messages import (
    Capabilities,
    DeviceInfo,
    PrivacyStatus,
    RepresentInstruction,
    RepresentReply,
    TrainSettings,
    WeightsInstruction,
    WeightsReply,
)
from mmfl.protocols.records import ProtocolError, from_wire, to_wire


def choose_device(requested: str) -> torch.device:
    """``auto`` takes the GPU when there is one; ``cuda:N`` must exist."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MmflError(f"device {requested} requested but this machine has no CUDA GPU")
    return device


def describe_device(device: torch.device) -> DeviceInfo:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return DeviceInfo(
            kind="cuda", name=props.name, index=index, memory_gb=round(props.total_memory / 2**30, 1)
        )
    return DeviceInfo(kind="cpu", name="cpu")


class Site:
    """A data site; loads lazily and caches what does not change between messages."""

    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        self.spec = config.site
        self.state = SiteState(config.state_dir)
        self.device = choose_device(self.spec.device)
        self.seed = site_seed(config.seed, self.spec.id)
        self.budget = PrivacyBudget(config.state_dir, self.spec.id, self.spec.privacy)

    @property
    def private(self) -> bool:
        """Whether DP is on: then only DP releases and settings leave this site."""
        return self.spec.privacy.enabled

    # -- data ---------------------------------------------------------------------------------
    @cached_property
    def info(self) -> DatasetInfo:
        path = self.config.public_manifest.parent / "dataset.json"
        if not path.exists():
            raise MmflError(f"no dataset.json next to the public manifest {self.config.public_manifest}")
        return DatasetInfo.model_validate_json(path.read_text(encoding="utf-8"))

    # Rows are checked here; files were checked in full when the agent started (mmfl client
    # start) and their content is hashed into the fingerprints below, so a changed or missing
    # file still stops the site. Skipping the image decode keeps each ClientApp process fast.
    @cached_property
    def public_manifest(self) -> Manifest:
        return load_manifest(self.config.public_manifest, self.info.modalities, check_files=False)

    @cached_property
    def private_manifest(self) -> Manifest:
        return load_manifest(self.config.manifest, self.info.modalities, check_files=False)

    @cached_property
    def _featurizers(self):  # noqa: ANN202
        return featurizers_for(self.spec.architectures, self.info.image_size, self.info.image_channels)

    @cached_property
    def public(self) -> Tensors:
        return load_tensors(
            self.public_manifest.samples, self._featurizers, self.info.classes, feature_cache_root()
        )

    @cached_property
    def _rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(training, holdout) rows of the private manifest; each row's side depends on that
        row alone (its group, else its content), see :func:`~mmfl.data.partition.holdout_split`."""
        keys = [sample_key(s) for s in self.private_manifest.samples]
        return holdout_split(keys, self.seed, self.config.holdout_fraction)

    @cached_property
    def _private_split(self) -> tuple[Tensors, Tensors]:
        data = load_tensors(
            self.private_manifest.samples, self._featurizers, self.info.classes, feature_cache_root()
        )
        train, hold = self._rows
        return data.subset(train), data.subset(hold)

    @property
    def train_data(self) -> Tensors:
        return self._private_split[0]

    @property
    def holdout(self) -> Tensors:
        return self._private_split[1]

    @cached_property
    def train_groups(self) -> list[str] | None:
        """The group of each training row when the privacy unit is a group (else None)."""
        if self.spec.privacy.unit != "group":
            return None
        samples = self.private_manifest.samples
        groups = [samples[int(i)].group for i in self._rows[0]]
        if any(g is None for g in groups):
            raise MmflError(f"group-level privacy needs a group id on every row of {self.config.manifest}")
        return groups  # type: ignore[return-value]

    @cached_property
    def training_units(self) -> int:
        """Privacy units in the training rows: rows, or distinct groups."""
        groups = self.train_groups
        return len(self._rows[0]) if groups is None else len(set(groups))

    @cached_property
    def data_key(self) -> str:
        """The private manifest's fingerprint keyed with the site's secret."""
        return self.state.keyed_fingerprint(self.private_manifest.fingerprint())

    @property
    def by_class(self) -> bool:
        return self.info.pairing == "class"

    # -- model ----------------------------------------------------------------------------------
    def new_model(self) -> MultiEncoder:
        shapes = {m: f.shape for m, f in self._featurizers.items()}
        return MultiEncoder(
            self.spec.architectures, shapes, self.config.embed_dim, len(self.info.classes), self.seed
        )

    def load_model(
        self, run_id: str, before_round: int | None = None
    ) -> tuple[MultiEncoder, dict[str, Any] | None]:
        """The model this run had before ``before_round`` and its snapshot's metadata (a fresh
        model and None for a run's first round)."""
        model = self.new_model()
        try:
            meta = self.state.load_model(model, self.spec.architectures, run_id, before_round)
        except ValueError as exc:
            raise MmflError(str(exc)) from None
        return model.to(self.device), meta

    # -- messages ---------------------------------------------------------------------------------
    def privacy_status(self) -> PrivacyStatus:
        try:
            key = self.data_key if self.private else None
        except (MmflError, OSError):  # data that does not load has no count to show
            key = None
        return self.budget.status(key)

    def capabilities(self) -> Capabilities:
        """What the site is; with DP on, its size only as the ledger's noisy count."""
        train = self.train_data
        if self.private:
            try:
                with self.budget.exclusive():
                    self.budget.open(self.data_key, self.training_units)  # the one noisy count release
            except (LedgerError, PrivacyRefusal):
                pass  # the status below says the budget cannot be spent
        return Capabilities(
            site_id=self.spec.id,
            modalities=list(self.spec.modalities),
            architectures=dict(self.spec.architectures),
            samples=None if self.private else {m: int(train.present[m].sum()) for m in self.spec.modalities},
            paired_samples=None
            if self.private
            else int(len(train.complete_rows(self.spec.modalities)))
            if len(self.spec.modalities) > 1
            else 0,
            classes=len(self.info.classes),
            device=describe_device(self.device),
            public_fingerprint=self.public_manifest.fingerprint(),
            data_fingerprint=self.data_key,
            privacy=self.privacy_status(),
        )

    def _public_round(self, instruction: RepresentInstruction, arrays: dict[str, np.ndarray]) -> PublicRound:
        indices = instruction.public_indices
        n_public = len(self.public)
        if any(i < 0 or i >= n_public for i in indices):
            raise ProtocolError(f"public index outside 0..{n_public - 1}")
        globals_, position = {}, {}
        for m, rows in instruction.rows.items():
            if m not in arrays:
                continue
            arr = from_wire(arrays[m])
            if arr.shape != (len(rows), instruction.embed_dim) or not np.isfinite(arr).all():
                raise ProtocolError(
                    f"global {m} representations of shape {arr.shape} do not match the instruction"
                )
            globals_[m] = torch.from_numpy(np.ascontiguousarray(arr))
            where = {r: i for i, r in enumerate(rows)}
            position[m] = torch.tensor([where.get(r, -1) for r in indices], dtype=torch.long)
        return PublicRound(self.public.subset(indices), globals_, position)

    def represent(
        self, instruction: RepresentInstruction, arrays: dict[str, np.ndarray]
    ) -> tuple[RepresentReply, dict[str, np.ndarray]]:
        """Train one round, persist the model, encode this round's public rows."""
        refused = self._refusal(instruction)
        if refused:
            return refused, {}
        started = time.perf_counter()
        pub = self._public_round(instruction, arrays)
        model, meta = self.load_model(instruction.run_id, before_round=instruction.round)
        fresh_from = None
        if self.private and meta is not None and not meta.get("dp"):
            # A DP round must not continue (or be regularised toward) a model trained without DP.
            fresh_from, model = int(meta["round"]), self.new_model().to(self.device)
        old = copy.deepcopy(model).eval()
        for p in old.parameters():
            p.requires_grad_(False)
        settings = instruction.settings
        rng = np.random.default_rng([self.seed, instruction.round])
        if self.private:
            public_batches = (
                itertools.cycle(batches(len(pub.tensors), settings.public_batch_size, rng))
                if settings.regularisers
                else None
            )
            public_losses: list[float] = []

            def public_term() -> torch.Tensor | None:
                assert public_batches is not None
                loss = public_loss(model, old, pub, next(public_batches), settings, self.device)
                if loss is not None:
                    public_losses.append(float(loss.detach()))
                return loss

            try:
                metrics, _ = self._train_private(
                    model,
                    instruction.run_id,
                    instruction.round,
                    settings,
                    pub.globals_,
                    {
                        m: self.public.labels[torch.as_tensor(r, dtype=torch.long)]
                        for m, r in instruction.rows.items()
                    },
                    public_term if public_batches is not None else None,
                    fresh_from,
                )
            except (LedgerError, PrivacyRefusal) as exc:
                return self._refused(instruction.round, str(exc)), {}
            if public_losses:
                metrics["public_loss"] = float(np.mean(public_losses))
        else:
            metrics = train_round(
                model,
                old,
                self.train_data,
                pub,
                settings,
                self.by_class,
                self.config.train.task_temperature,
                rng,
                self.device,
            )
        self.state.save_model(
            model, instruction.round, self.spec.architectures, instruction.run_id, {"dp": self.private}
        )
        rows = {m: instruction.rows[m] for m in self.spec.modalities if m in instruction.rows}
        reps = encode_rows(model, self.public, rows)
        wire = {m: to_wire(v, settings.payload_dtype) for m, v in reps.items()}
        # A DP site's training time would tell its size; the coordinator times rounds itself.
        seconds = 0.0 if self.private else time.perf_counter() - started
        if not self.private:
            metrics["train_seconds"] = seconds
        reply = RepresentReply(
            site_id=self.spec.id,
            round=instruction.round,
            metrics=metrics,
            privacy=self.privacy_status(),
            train_seconds=seconds,
        )
        return reply, wire

    def _train_private(
        self,
        model: MultiEncoder,
        run_id: str,
        round_: int,
        settings: TrainSettings,
        negatives: dict[str, torch.Tensor],
        negative_labels: dict[str, torch.Tensor],
        public_term: Callable[[], torch.Tensor | None] | None,
        fresh_from: int | None = None,
    ) -> tuple[dict[str, float], RoundPlan]:
        """A DP-SGD round: planned and checked against the budget before any gradient, the
        mechanism at run time checked against the plan, the ledger durable before this returns
        (and so before any reply). Raises :class:`PrivacyRefusal` or :class:`LedgerError`.

        Private losses use ``negatives`` (representations of public rows, fixed for the round)
        as the only negatives, so each sample's loss depends on that sample alone.
        """
        # Opacus takes seconds to import; sites without DP never load it.
        from mmfl.client.privacy import private_losses, run_private_round

        with self.budget.exclusive():  # planning to commit: one DP round at a time
            ledger = self.budget.open(self.data_key, self.training_units)
            plan = self.budget.plan(ledger, self.data_key, settings.batch_size, settings.local_epochs)
            out = {
                "dp_steps": float(plan.steps),
                "noise_multiplier": plan.noise_multiplier,
                "sample_rate": plan.sample_rate,
            }
            if fresh_from is not None:
                ledger = self.budget.note(
                    ledger,
                    "fresh-model",
                    f"run {run_id} round {round_}: the model of round {fresh_from} was trained without DP; "
                    "DP training starts from a fresh model",
                )
                out["dp_fresh_model"] = 1.0
            if plan.steps == 0:
                return out, plan
            charged = self.budget.commit(ledger, plan, run_id, round_)  # before the first step
            history = run_private_round(
                model,
                self.train_data,
                self.train_groups,
                plan,
                self.spec.privacy,
                settings.lr,
                settings.weight_decay,
                ledger.history,
                lambda batch: private_losses(
                    model,
                    batch,
                    negatives,
                    negative_labels,
                    self.by_class,
                    self.config.train.task_temperature,
                    self.device,
                ),
                public_term,
            )
            if [list(h) for h in history] != charged.history:
                raise LedgerError(
                    f"the accountant recorded {history}, not the charged {charged.history}; nothing is sent"
                )
            return out, plan

    def _refused(self, round_: int, reason: str) -> RepresentReply:
        return RepresentReply(
            site_id=self.spec.id, round=round_, status="refused", reason=reason, privacy=self.privacy_status()
        )

    def _refusal(self, instruction: RepresentInstruction) -> RepresentReply | None:
        mine = self.public_manifest.fingerprint()
        if instruction.public_fingerprint != mine:
            return self._refused(
                instruction.round,
                f"public-set fingerprint {instruction.public_fingerprint[:12]} differs from ours {mine[:12]}",
            )
        return None

    def train_weights(
        self, instruction: WeightsInstruction, weights: dict[str, np.ndarray]
    ) -> tuple[WeightsReply, dict[str, np.ndarray], int]:
        """FedAvg baseline: start from the global weights, train the task loss, return weights
        and the number of examples to weight them by. With DP on, the training is DP-SGD (paired
        rows contrast against the global model's representations of the public set), the
        round is accounted, and the number is the ledger's noisy count."""
        model = self.new_model()
        try:
            model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
        except RuntimeError as exc:
            raise ProtocolError(
                f"global weights do not fit this site's architectures: {str(exc).splitlines()[0]}"
            ) from None
        model.to(self.device)
        settings = instruction.settings.model_copy(update={"regularisers": False})
        if self.private:
            rows = {
                m: [i for i in range(len(self.public)) if bool(self.public.present[m][i])]
                for m in model.modalities
            }
            negatives = {m: torch.from_numpy(v) for m, v in encode_rows(model, self.public, rows).items()}
            labels = {m: self.public.labels[torch.as_tensor(r, dtype=torch.long)] for m, r in rows.items()}
            metrics, plan = self._train_private(
                model, instruction.run_id, instruction.round, settings, negatives, labels, None
            )
            examples = plan.units
        else:
            rng = np.random.default_rng([self.seed, instruction.round])
            metrics = train_round(
                model,
                None,
                self.train_data,
                None,
                settings,
                self.by_class,
                self.config.train.task_temperature,
                rng,
                self.device,
            )
            examples = len(self.train_data)
        self.state.save_model(
            model, instruction.round, self.spec.architectures, instruction.run_id, {"dp": self.private}
        )
        out = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        reply = WeightsReply(
            site_id=self.spec.id,
            round=instruction.round,
            architecture=json.dumps(self.spec.architectures, sort_keys=True),
            metrics=metrics,
            privacy=self.privacy_status(),
        )
        return reply, out, examples

    @torch.no_grad()
    def evaluate(self, run_id: str) -> dict[str, float]:
        """Task metrics on the held-out private rows: accuracy per class head, and for paired
        sites retrieval between their first two modalities."""
        if self.private:
            return {}  # metrics on private rows are not covered by the DP guarantee
        model, _ = self.load_model(run_id)
        model.eval()
        data = self.holdout
        out: dict[str, float] = {"holdout_samples": float(len(data))}
        held = torch.stack([self.train_data.present[m] for m in model.modalities]).sum(0)
        heads_trained = bool((held == 1).any())  # heads learn from single-modality rows only
        for m in model.modalities:
            rows = torch.nonzero(data.present[m] & (data.labels >= 0)).flatten()
            if len(rows) and len(model.heads) and heads_trained:
                z = model.encode(m, data.inputs[m][rows]).to(self.device)
                out[f"{m}_accuracy"] = accuracy(model.heads[m](z).cpu(), data.labels[rows])
        if len(model.modalities) > 1:
            a, b = model.modalities[:2]
            rows = data.complete_rows([a, b])
            if len(rows) > 1:
                za = model.encode(a, data.inputs[a][rows])
                zb = model.encode(b, data.inputs[b][rows])
                metrics = retrieval_metrics(za, zb, data.labels[rows], self.by_class, (a, b))
                out.update({f"retrieval_{k}": v for k, v in metrics.items()})
        return out
