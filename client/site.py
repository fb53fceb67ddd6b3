"""One site: its private data, the public set, its model, and what it does per message."""

from __future__ import annotations

import copy
import itertools
import json
import time
import zlib
from functools import cached_property

import numpy as np
import torch

from mmfl.client.ledger import LedgerError, PrivacyLedger
from mmfl.client.state import SiteState
from mmfl.client.training import PublicRound, encode_rows, public_loss, train_round
from mmfl.config import SiteConfig
from mmfl.data.builtin import DatasetInfo
from mmfl.data.manifest import Manifest, load_manifest
from mmfl.data.partition import holdout_split
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
    WeightsInstruction,
    WeightsReply,
)
from mmfl.protocols.records import ProtocolError, from_wire, to_wire


def site_seed(config: SiteConfig) -> int:
    """The site's own seed: the run seed combined with a stable hash of its id."""
    return config.seed * 1_000_003 + zlib.crc32(config.site.id.encode())


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
        self.seed = site_seed(config)

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
    def _private_split(self) -> tuple[Tensors, Tensors]:
        data = load_tensors(
            self.private_manifest.samples, self._featurizers, self.info.classes, feature_cache_root()
        )
        train, hold = holdout_split(len(data), site_seed(self.config), self.config.holdout_fraction)
        return data.subset(train), data.subset(hold)

    @property
    def train_data(self) -> Tensors:
        return self._private_split[0]

    @property
    def holdout(self) -> Tensors:
        return self._private_split[1]

    @property
    def by_class(self) -> bool:
        return self.info.pairing == "class"

    # -- model ----------------------------------------------------------------------------------
    def new_model(self) -> MultiEncoder:
        shapes = {m: f.shape for m, f in self._featurizers.items()}
        return MultiEncoder(
            self.spec.architectures, shapes, self.config.embed_dim, len(self.info.classes), self.seed
        )

    def load_model(self, run_id: str, before_round: int | None = None) -> tuple[MultiEncoder, int]:
        """The model this run had before ``before_round`` (a fresh one for a run's first round)."""
        model = self.new_model()
        try:
            last_round = self.state.load_model(model, self.spec.architectures, run_id, before_round)
        except ValueError as exc:
            raise MmflError(str(exc)) from None
        return model.to(self.device), last_round

    # -- messages ---------------------------------------------------------------------------------
    @cached_property
    def ledger(self) -> PrivacyLedger:
        return PrivacyLedger(self.config.state_dir, self.spec.id, self.private_manifest.fingerprint())

    def _trained_with_dp(self) -> bool:
        meta = self.state.meta_path
        return meta.exists() and bool(json.loads(meta.read_text(encoding="utf-8")).get("dp"))

    def privacy_status(self) -> PrivacyStatus:
        p = self.spec.privacy
        if not p.enabled:
            return PrivacyStatus(enabled=False)
        try:
            ledger = self.ledger.load(expected_existing=self._trained_with_dp())
        except LedgerError:
            spent = p.target_epsilon  # an unverifiable ledger counts as exhausted
            ledger = None
        else:
            spent = PrivacyLedger.spent(ledger) if ledger else 0.0
        return PrivacyStatus(
            enabled=True,
            target_epsilon=p.target_epsilon,
            delta=p.delta,
            epsilon_spent=spent,
            noise_multiplier=ledger.noise_multiplier if ledger else p.noise_multiplier,
            unit=p.unit,
        )

    def capabilities(self) -> Capabilities:
        train = self.train_data
        return Capabilities(
            site_id=self.spec.id,
            modalities=list(self.spec.modalities),
            architectures=dict(self.spec.architectures),
            samples={m: int(train.present[m].sum()) for m in self.spec.modalities},
            paired_samples=int(len(train.complete_rows(self.spec.modalities)))
            if len(self.spec.modalities) > 1
            else 0,
            classes=len(self.info.classes),
            device=describe_device(self.device),
            public_fingerprint=self.public_manifest.fingerprint(),
            data_fingerprint=self.private_manifest.fingerprint(),
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
        model, _ = self.load_model(instruction.run_id, before_round=instruction.round)
        old = copy.deepcopy(model).eval()
        for p in old.parameters():
            p.requires_grad_(False)
        settings = instruction.settings
        rng = np.random.default_rng([self.seed, instruction.round])
        if self.spec.privacy.enabled:
            outcome = self._train_private(model, old, pub, instruction, rng)
            if isinstance(outcome, RepresentReply):
                return outcome, {}
            metrics = outcome
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
            model,
            instruction.round,
            self.spec.architectures,
            instruction.run_id,
            {"dp": self.spec.privacy.enabled},
        )
        rows = {m: instruction.rows[m] for m in self.spec.modalities if m in instruction.rows}
        reps = encode_rows(model, self.public, rows)
        wire = {m: to_wire(v, settings.payload_dtype) for m, v in reps.items()}
        seconds = time.perf_counter() - started
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
        old: MultiEncoder,
        pub: PublicRound,
        instruction: RepresentInstruction,
        rng: np.random.Generator,
    ) -> dict[str, float] | RepresentReply:
        """A DP-SGD round, refused beforehand if it would exceed the budget; the ledger is
        durable before this returns (and so before any reply)."""
        # Opacus takes seconds to import; sites without DP never load it.
        from mmfl.client.privacy import PoissonSampler, PrivateTraining, plan_noise, private_losses

        p, settings, train = self.spec.privacy, instruction.settings, self.train_data
        try:
            ledger = self.ledger.load(expected_existing=self._trained_with_dp())
        except LedgerError as exc:
            return self._refused(instruction, str(exc))
        if ledger is None:
            ledger = self.ledger.create(p.accountant, p.delta, p.target_epsilon, p.unit)
        groups = [self.private_group(i) for i in self._train_rows] if p.unit == "group" else None
        try:
            sampler = PoissonSampler.build(groups, len(train), settings.batch_size, rng)
        except ValueError as exc:
            return self._refused(instruction, str(exc))
        steps = settings.local_epochs * sampler.steps_per_epoch
        sigma = ledger.noise_multiplier or plan_noise(p, sampler.sample_rate, steps)
        spent = PrivacyLedger.spent(ledger)
        projected = PrivacyLedger.project(ledger, sigma, sampler.sample_rate, steps)
        if projected > p.target_epsilon * (1 + 1e-9):
            return self._refused(
                instruction,
                f"privacy budget: target epsilon {p.target_epsilon:.3f}, spent {spent:.3f}, "
                f"this round would reach {projected:.3f}",
            )
        labels = {
            m: self.public.labels[torch.as_tensor(rows, dtype=torch.long)]
            for m, rows in instruction.rows.items()
        }
        generator = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)))
        dp = PrivateTraining(
            model,
            p,
            settings.lr,
            settings.weight_decay,
            sigma,
            sampler.sample_rate,
            settings.batch_size,
            [tuple(h) for h in ledger.history],
            generator,  # type: ignore[misc]
        )
        model.train()
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
            for _ in range(steps):
                batch = train.subset(sampler.draw())
                dp.step(
                    lambda batch=batch: private_losses(
                        model,
                        batch,
                        pub.globals_,
                        labels,
                        self.by_class,
                        self.config.train.task_temperature,
                        self.device,
                    ),
                    public_term if public_batches is not None else None,
                )
        finally:
            dp.close()
        self.ledger.commit(
            ledger, instruction.run_id, instruction.round, dp.history, sigma, sampler.sample_rate, steps
        )
        # No metric computed on private data leaves the site (it would not be covered by epsilon).
        out = {"dp_steps": float(steps), "noise_multiplier": sigma, "sample_rate": sampler.sample_rate}
        if public_losses:
            out["public_loss"] = float(np.mean(public_losses))
        return out

    @cached_property
    def _train_rows(self) -> np.ndarray:
        return holdout_split(
            len(self.private_manifest), site_seed(self.config), self.config.holdout_fraction
        )[0]

    def private_group(self, train_index: int) -> str | None:
        return self.private_manifest.samples[int(self._train_rows[train_index])].group

    def _refused(self, instruction: RepresentInstruction, reason: str) -> RepresentReply:
        return RepresentReply(
            site_id=self.spec.id,
            round=instruction.round,
            status="refused",
            reason=reason,
            privacy=self.privacy_status(),
        )

    def _refusal(self, instruction: RepresentInstruction) -> RepresentReply | None:
        mine = self.public_manifest.fingerprint()
        if instruction.public_fingerprint != mine:
            reason = (
                f"public-set fingerprint {instruction.public_fingerprint[:12]} differs from ours {mine[:12]}"
            )
            return RepresentReply(
                site_id=self.spec.id,
                round=instruction.round,
                status="refused",
                reason=reason,
                privacy=self.privacy_status(),
            )
        return None

    def train_weights(
        self, instruction: WeightsInstruction, weights: dict[str, np.ndarray]
    ) -> tuple[WeightsReply, dict[str, np.ndarray], int]:
        """FedAvg baseline: start from the global weights, train the task loss, return weights."""
        model = self.new_model()
        try:
            model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
        except RuntimeError as exc:
            raise ProtocolError(
                f"global weights do not fit this site's architectures: {str(exc).splitlines()[0]}"
            ) from None
        model.to(self.device)
        settings = instruction.settings.model_copy(update={"regularisers": False})
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
        self.state.save_model(
            model, instruction.round, self.spec.architectures, instruction.run_id, {"dp": False}
        )
        out = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        reply = WeightsReply(
            site_id=self.spec.id,
            round=instruction.round,
            architecture=json.dumps(self.spec.architectures, sort_keys=True),
            metrics=metrics,
            privacy=self.privacy_status(),
        )
        return reply, out, len(self.train_data)

    @torch.no_grad()
    def evaluate(self, run_id: str) -> dict[str, float]:
        """Task metrics on the held-out private rows: accuracy per class head, and for paired
        sites retrieval between their first two modalities."""
        if self.spec.privacy.enabled and not self.spec.privacy.report_private_metrics:
            return {}  # held-out private metrics are not covered by the DP guarantee
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
