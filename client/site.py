"""One site: what it does for each message, on top of its data (:mod:`.site_data`), its model
snapshots (:mod:`.state`) and its privacy budget (:mod:`.budget`)."""

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

from mmfl.client.policy import PolicyCheck
from mmfl.client.privacy.budget import PrivacyBudget
from mmfl.client.privacy.ledger import LedgerError
from mmfl.client.privacy.round import public_negatives, train_private
from mmfl.client.site_data import SiteData
from mmfl.client.state import SiteState
from mmfl.client.training import PublicRound, encode_rows, public_loss, train_round
from mmfl.config import SiteConfig
from mmfl.data.mixing import encode_mixed
from mmfl.data.partition import site_seed
from mmfl.data.tensors import concat
from mmfl.errors import MmflError
from mmfl.models.losses import multimodal_task_loss
from mmfl.models.metrics import accuracy, retrieval_metrics
from mmfl.models.multimodal import MultiEncoder, batches
from mmfl.protocols.messages import (
    Capabilities,
    DeviceInfo,
    MixPlan,
    PrivacyStatus,
    ReleaseInstruction,
    ReleaseReply,
    RepresentInstruction,
    RepresentReply,
    TrainSettings,
    WeightsInstruction,
    WeightsReply,
    positions,
)
from mmfl.protocols.records import (
    ProtocolError,
    check_represent_instruction,
    check_weights,
    from_wire,
    to_wire,
)


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


def check_finite(metrics: dict[str, float]) -> None:
    """A round whose metrics are not finite has trained nothing worth sending."""
    bad = sorted(k for k, v in metrics.items() if not np.isfinite(v))
    if bad:
        raise MmflError(f"training produced a non-finite {bad[0]}; nothing is sent")


class Site:
    """A data site. Failures raise; :mod:`mmfl.client.app` turns them into refusals."""

    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        self.spec = config.site
        self.state = SiteState(config.state_dir)
        self.data = SiteData(config, self.state)
        self.device = choose_device(self.spec.device)
        self.seed = site_seed(config.seed, self.spec.id)
        self.budget = PrivacyBudget(config.state_dir, self.spec.id, self.spec.privacy, config.ledger_key)
        self.policy = PolicyCheck(self.spec.policy)

    @property
    def private(self) -> bool:
        """Whether DP is on: then only DP releases and settings leave this site."""
        return self.spec.privacy.enabled

    # -- model ----------------------------------------------------------------------------------
    def new_model(self) -> MultiEncoder:
        shapes = {m: f.shape for m, f in self.data.featurizers.items()}
        return MultiEncoder(
            self.spec.architectures, shapes, self.config.embed_dim, len(self.data.info.classes), self.seed
        )

    @cached_property
    def _weight_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.new_model().state_dict().items()}

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

    def _save(self, model: MultiEncoder, run_id: str, round_: int) -> None:
        self.state.save_model(model, round_, self.spec.architectures, run_id, {"dp": self.private})

    # -- messages ---------------------------------------------------------------------------------
    def privacy_status(self) -> PrivacyStatus:
        try:
            key = self.data.data_key if self.private else None
        except (MmflError, OSError):  # data that does not load has no count to show
            key = None
        return self.budget.status(key)

    def capabilities(self) -> Capabilities:
        """What the site is; with DP on, no size at all: its noisy count leaves with the first
        round it trains (answering a query spends nothing, so a site refused at discovery has
        spent nothing)."""
        train = self.data.train
        mods = self.spec.modalities
        return Capabilities(
            site_id=self.spec.id,
            modalities=list(mods),
            architectures=dict(self.spec.architectures),
            samples=None if self.private else {m: int(train.present[m].sum()) for m in mods},
            paired_samples=None
            if self.private
            else (int(len(train.complete_rows(mods))) if len(mods) > 1 else 0),
            classes=len(self.data.info.classes),
            device=describe_device(self.device),
            public_fingerprint=self.data.public_manifest.fingerprint(),
            data_fingerprint=self.data.data_key,
            privacy=self.privacy_status(),
            releases_final_model=self.spec.policy.release_final_model,
            shares_weights="weights" in self.spec.policy.accept,
        )

    def _public_round(self, instruction: RepresentInstruction, arrays: dict[str, np.ndarray]) -> PublicRound:
        """This round's public rows and the global representations, checked as the coordinator
        checks replies (:func:`~mmfl.protocols.records.check_represent_instruction`)."""
        mine = self.data.public_manifest.fingerprint()
        if instruction.public_fingerprint != mine:
            raise ProtocolError(
                f"public-set fingerprint {instruction.public_fingerprint[:12]} differs from ours {mine[:12]}"
            )
        check_represent_instruction(instruction, arrays, len(self.data.public))
        indices = instruction.public_indices
        globals_ = {m: torch.from_numpy(np.ascontiguousarray(from_wire(a))) for m, a in arrays.items()}
        position = {
            m: torch.tensor(positions(instruction.rows[m], indices), dtype=torch.long) for m in globals_
        }
        return PublicRound(self.data.public.subset(indices), globals_, position)

    def _check_mix(self, plan: MixPlan) -> None:
        """Every mixed item of a modality this site holds is built from public rows holding it."""
        public = self.data.public
        for m in self.spec.modalities:
            if m in plan.weight:
                first, second = plan.rows_of(m)
                used = torch.as_tensor([*first, *second], dtype=torch.long)
                if not bool(public.present[m][used].all()):
                    raise ProtocolError(f"mix plan: an item of {m} mixes a public row without {m}")

    def check_settings(self, settings: TrainSettings, public_rows: int | None) -> None:
        """Refuse settings this site cannot train with (before any work or charge);
        ``public_rows``: how many public rows the round holds (None: the message has none)."""
        if settings.local_epochs and len(self.spec.modalities) > 1 and settings.batch_size < 2:
            raise ProtocolError(
                f"settings.batch_size {settings.batch_size}: a paired site's contrastive task loss "
                "needs at least 2 rows a batch"
            )
        if public_rows == 0 and settings.regularisers and settings.local_epochs:
            raise ProtocolError(
                "settings.regularisers is on but the round's public subset is empty: nothing to "
                "regularise toward"
            )

    def represent(
        self, instruction: RepresentInstruction, arrays: dict[str, np.ndarray]
    ) -> tuple[RepresentReply, dict[str, np.ndarray]]:
        """Check everything the instruction asks (before any work, read of private rows or
        privacy charge), train one round, persist the model, encode the public rows (or the
        mixed items) the instruction asks for."""
        started = time.perf_counter()
        self.policy.represent(instruction, list(self.spec.modalities))
        settings = instruction.settings
        self.check_settings(settings, len(instruction.public_indices))
        if not self.private and settings.local_epochs:  # see mmfl.client.policy: not with DP
            public = self.data.public_rows if settings.public_pairs else 0
            self.policy.steps_of(settings, len(self.data.rows[0]) + public)
        pub = self._public_round(instruction, arrays)
        if instruction.mix is not None:
            self._check_mix(instruction.mix)
        model, meta = self.load_model(instruction.run_id, before_round=instruction.round)
        fresh_from = None
        if self.private and meta is not None and not meta.get("dp"):
            # A DP round must not continue (or be regularised toward) a model trained without DP.
            fresh_from, model = int(meta["round"]), self.new_model().to(self.device)
        old = copy.deepcopy(model).eval()
        for p in old.parameters():
            p.requires_grad_(False)
        rng = np.random.default_rng([self.seed, instruction.round])
        if self.private:
            metrics = self._represent_private(model, old, pub, instruction, rng, fresh_from)
        else:
            train = (
                concat([self.data.train, self.data.public_training])
                if settings.public_pairs
                else self.data.train
            )
            metrics = train_round(
                model,
                old,
                train,
                pub,
                settings,
                self.data.by_class,
                self.config.train.task_temperature,
                rng,
                self.device,
            )
        check_finite(metrics)
        self._save(model, instruction.run_id, instruction.round)
        if instruction.mix is not None:
            reps = encode_mixed(model, self.data.public.inputs, instruction.mix)
        else:
            rows = {m: instruction.rows[m] for m in self.spec.modalities if m in instruction.rows}
            reps = encode_rows(model, self.data.public, rows)
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

    def _represent_private(
        self,
        model: MultiEncoder,
        old: MultiEncoder,
        pub: PublicRound,
        instruction: RepresentInstruction,
        rng: np.random.Generator,
        fresh_from: int | None,
    ) -> dict[str, float]:
        """The DP round of :meth:`represent`: negatives are the received global representations
        (the model's own public representations when none came), and the public regularisers
        run between DP steps."""
        settings = instruction.settings
        use_public = settings.regularisers and bool(pub.globals_)
        public_batches = (
            itertools.cycle(batches(len(pub.tensors), settings.public_batch_size, rng))
            if use_public
            else None
        )
        public_losses: list[float] = []
        # Task loss on the public pairs: public data, so its gradient joins each DP step
        # unclipped and unnoised, as the regularisers' does (accounting unchanged).
        pairs = self.data.public_training if settings.public_pairs else None
        pair_batches = (
            itertools.cycle(batches(len(pairs), settings.batch_size, rng)) if pairs is not None else None
        )

        def public_term() -> torch.Tensor | None:
            terms = []
            if public_batches is not None:
                terms.append(public_loss(model, old, pub, next(public_batches), settings, self.device))
            if pairs is not None and pair_batches is not None:
                terms.append(
                    multimodal_task_loss(
                        model,
                        pairs.subset(next(pair_batches)),
                        self.data.by_class,
                        self.config.train.task_temperature,
                        self.device,
                    )
                )
            present = [t for t in terms if t is not None]
            if not present:
                return None
            loss = torch.stack(present).sum()
            public_losses.append(float(loss.detach()))
            return loss

        if pub.globals_:
            negatives = pub.globals_
            labels = {
                m: self.data.public.labels[torch.as_tensor(r, dtype=torch.long)]
                for m, r in instruction.rows.items()
            }
        else:
            negatives, labels = public_negatives(model, self.data)
        metrics, _ = train_private(
            self.budget,
            self.data,
            model,
            instruction.run_id,
            instruction.round,
            settings,
            negatives,
            labels,
            public_term if use_public or pairs is not None else None,
            self.device,
            fresh_from,
        )
        if public_losses:
            metrics["public_loss"] = float(np.mean(public_losses))
        return metrics

    def _public_pairs_term(
        self, model: MultiEncoder, settings: TrainSettings, losses: list[float]
    ) -> Callable[[], torch.Tensor | None]:
        """The task loss on a batch of public pairs, joined to each DP step unclipped and
        unnoised (public data: the accounting does not change); each value goes to ``losses``."""
        pairs = self.data.public_training
        rng = np.random.default_rng([self.seed, 0x9A1F])
        order = itertools.cycle(batches(len(pairs), settings.batch_size, rng))
        temperature = self.config.train.task_temperature

        def term() -> torch.Tensor | None:
            batch = pairs.subset(next(order))
            loss = multimodal_task_loss(model, batch, self.data.by_class, temperature, self.device)
            if loss is not None:
                losses.append(float(loss.detach()))
            return loss

        return term

    def train_weights(
        self, instruction: WeightsInstruction, weights: dict[str, np.ndarray]
    ) -> tuple[WeightsReply, dict[str, np.ndarray], int]:
        """FedAvg baseline: start from the global weights, train the task loss, return weights
        and the number of examples to weight them by. With DP on, the training is DP-SGD (paired
        rows contrast against the global model's representations of the public set), the
        round is accounted, and the number is the ledger's noisy count."""
        check_weights(weights, self._weight_shapes)
        settings = instruction.settings.model_copy(update={"regularisers": False})
        self.policy.weights(settings, sum(int(np.asarray(w).nbytes) for w in weights.values()))
        if self.private and settings.proximal_mu > 0:
            raise ProtocolError(
                "FedProx's proximal term is not available with DP-SGD; use fedavg-public or fedavgm"
            )
        self.check_settings(settings, None)
        if not self.private and settings.local_epochs:
            public = self.data.public_rows if settings.public_pairs else 0
            self.policy.steps_of(settings, len(self.data.rows[0]) + public)
        model = self.new_model()
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
        model.to(self.device)
        if self.private:
            negatives, labels = public_negatives(model, self.data)
            public_losses: list[float] = []
            metrics, plan = train_private(
                self.budget,
                self.data,
                model,
                instruction.run_id,
                instruction.round,
                settings,
                negatives,
                labels,
                self._public_pairs_term(model, settings, public_losses) if settings.public_pairs else None,
                self.device,
            )
            if public_losses:
                metrics["public_loss"] = float(np.mean(public_losses))
            examples = plan.units
        else:
            rng = np.random.default_rng([self.seed, instruction.round])
            # a group member (regress) also trains on the public pairs, as a lone regress site does;
            # it is weighted by its own rows only (every member holds the same public pairs)
            train = (
                concat([self.data.train, self.data.public_training])
                if settings.public_pairs
                else self.data.train
            )
            metrics = train_round(
                model,
                None,
                train,
                None,
                settings,
                self.data.by_class,
                self.config.train.task_temperature,
                rng,
                self.device,
                anchor={n: p.detach().clone() for n, p in model.named_parameters()},
            )
            examples = len(self.data.train)
        check_finite(metrics)
        self._save(model, instruction.run_id, instruction.round)
        out = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        reply = WeightsReply(
            site_id=self.spec.id,
            round=instruction.round,
            architecture=json.dumps(self.spec.architectures, sort_keys=True),
            metrics=metrics,
            privacy=self.privacy_status(),
        )
        return reply, out, examples

    def release(self, instruction: ReleaseInstruction) -> tuple[ReleaseReply, dict[str, np.ndarray]]:
        """The run's final model, once, where the site's policy consents (else refused before
        anything is read). A DP site releases only a DP-trained model: post-processing, nothing
        spent, recorded in its ledger; a site without DP releases its model itself (its audit
        log says so)."""
        self.policy.release(self.private)
        model, meta = self.load_model(instruction.run_id)
        if meta is None:
            raise ProtocolError(f"this site holds no model of run {instruction.run_id} to release")
        if self.private:
            if not meta.get("dp"):
                raise MmflError(
                    f"the model of run {instruction.run_id} round {meta['round']} was not trained with DP; "
                    "a DP site releases only DP-trained models"
                )
            with self.budget.exclusive():
                ledger = self.budget.load()
                if ledger is None:
                    raise LedgerError("a DP-trained model with no privacy ledger: nothing is released")
                self.budget.note(
                    ledger,
                    "model-released",
                    f"run {instruction.run_id}: the final model (round {meta['round']}) released to the "
                    "coordinator; post-processing of a DP-trained model, nothing spent",
                )
        weights = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        reply = ReleaseReply(
            site_id=self.spec.id,
            round=int(meta["round"]),
            architectures=dict(self.spec.architectures),
            privacy=self.privacy_status(),
        )
        return reply, weights

    @torch.no_grad()
    def evaluate(self, run_id: str) -> dict[str, float]:
        """Task metrics on the held-out private rows: accuracy per class head, and for paired
        sites retrieval between their first two modalities."""
        if self.private:
            return {}  # metrics on private rows are not covered by the DP guarantee
        model, _ = self.load_model(run_id)
        model.eval()
        data = self.data.holdout
        out: dict[str, float] = {"holdout_samples": float(len(data))}
        held = torch.stack([self.data.train.present[m] for m in model.modalities]).sum(0)
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
                metrics = retrieval_metrics(za, zb, data.labels[rows], self.data.by_class, (a, b))
                out.update({f"retrieval_{k}": v for k, v in metrics.items()})
        return out
