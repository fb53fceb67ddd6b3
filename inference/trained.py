"""A trained server model rebuilt from a run folder or an export, ready to embed and evaluate.

A run folder (simulation or deployment) holds ``summary.json``, ``plan.json`` and
``final_model.pt``; an export holds ``model_card.json`` and ``model.safetensors``
(:mod:`mmfl.inference.export`). Both load into the same :class:`TrainedModel`; the card states
the architectures, featurizers and embedding size that rebuild the model exactly.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from mmfl import __version__
from mmfl.data.features import Featurizer, featurize
from mmfl.data.manifest import Manifest, load_manifest
from mmfl.data.prepared import read_dataset_info
from mmfl.data.sample import FILE_MODALITIES, Sample
from mmfl.data.tensors import Tensors, load_tensors
from mmfl.errors import MmflError
from mmfl.inference.card import (
    CARD_FILE,
    PREPROCESSING,
    WEIGHTS_FILE,
    EncoderCard,
    MemberCard,
    ModelCard,
    SitePrivacyCard,
)
from mmfl.models.encoders import architecture, featurizers_for
from mmfl.models.ensemble import fuse
from mmfl.models.metrics import accuracy, pairwise_retrieval
from mmfl.models.multimodal import MultiEncoder
from mmfl.paths import feature_cache_root
from mmfl.protocols.delivery import EnsembleRecord
from mmfl.protocols.summary import FinalMetrics, RunSummary, SiteSummary


class TrainedModel:
    """A trained model in eval mode with its card; ``embed`` maps items to unit vectors. A server
    model is one part; a sites' ensemble one part per member, each with its own featurizers,
    fused by similarity (:mod:`mmfl.models.ensemble`)."""

    def __init__(self, card: ModelCard, state: dict[str, torch.Tensor]) -> None:
        self.card = card
        parts = [m.encoders for m in card.members] if card.kind == "ensemble" else [card.encoders]
        dim = card.member_embed_dim or card.embed_dim
        self.parts: list[tuple[dict[str, Featurizer], MultiEncoder]] = []
        for k, encoders in enumerate(parts):
            architectures = {m: e.architecture for m, e in encoders.items()}
            model = MultiEncoder(
                architectures,
                {m: tuple(e.input_shape) for m, e in encoders.items()},
                dim,
                len(card.classes),
            )
            prefix = f"members.{k}." if card.kind == "ensemble" else ""
            own = {n.removeprefix(prefix): v for n, v in state.items() if n.startswith(prefix)}
            try:
                model.load_state_dict(own, strict=True)
            except RuntimeError as exc:
                first = str(exc).splitlines()[0]
                raise MmflError(f"weights do not match the model card's architectures: {first}") from None
            model.eval()
            feats = featurizers_for(architectures, card.image_size, card.image_channels)
            self.parts.append((feats, model))
        expected = sum(len(m.state_dict()) for _, m in self.parts)
        if len(state) != expected:
            raise MmflError(f"weights hold {len(state)} tensors; the card's model has {expected}")
        self.featurizers, self.model = self.parts[0]

    @property
    def modalities(self) -> list[str]:
        return list(self.card.modalities)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """Every modality pair, in the run's order (the first one is the headline)."""
        mods = self.modalities
        return [(mods[i], mods[j]) for i in range(len(mods)) for j in range(i + 1, len(mods))]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every part's weights (an ensemble's prefixed ``members.K.``)."""
        if self.card.kind != "ensemble":
            return self.model.state_dict()
        return {
            f"members.{k}.{n}": v for k, (_, m) in enumerate(self.parts) for n, v in m.state_dict().items()
        }

    # -- featurize and encode -------------------------------------------------------------------
    def part_tensors(self, samples: Sequence[Sample], progress: bool = False) -> list[Tensors]:
        """Featurize ``samples`` as the run did, once per part (same featurizers, same cache)."""
        return [
            load_tensors(samples, feats, self.card.classes, feature_cache_root(), progress)
            for feats, _ in self.parts
        ]

    def tensors(self, samples: Sequence[Sample], progress: bool = False) -> Tensors:
        """A server model's featurized inputs of ``samples`` (an ensemble: :meth:`part_tensors`)."""
        self._single("tensors")
        return self.part_tensors(samples, progress)[0]

    def encode(self, modality: str, inputs: torch.Tensor) -> torch.Tensor:
        """A server model's representations of featurized ``inputs`` (the run's evaluation batch size)."""
        self._single("encode")
        return self.model.encode(modality, inputs, self.card.eval_batch_size)

    def _single(self, what: str) -> None:
        if len(self.parts) > 1:
            raise MmflError(
                f"{what}: an ensemble featurizes each member's own way; use embed, embed_manifest, "
                "evaluate, or part_tensors with encode_rows"
            )

    def encode_rows(self, modality: str, data: list[Tensors], rows: torch.Tensor) -> torch.Tensor:
        """Vectors of ``rows`` of featurized data (one :class:`Tensors` per part)."""
        batch = self.card.eval_batch_size
        return fuse(
            [
                model.encode(modality, d.inputs[modality][rows], batch)
                for (_, model), d in zip(self.parts, data, strict=True)
            ]
        )

    def embed(self, modality: str, items: Sequence[str | Path]) -> np.ndarray:
        """Unit vectors ``(len(items), embed_dim)`` for file paths (image, audio) or texts."""
        if modality not in self.modalities:
            raise MmflError(f"this model has no {modality} encoder (it has {', '.join(self.modalities)})")
        samples = [Sample(f"item{i}", {modality: str(v)}) for i, v in enumerate(items)]
        if modality in FILE_MODALITIES:
            missing = [str(v) for v in items if not Path(v).is_file()]
            if missing:
                raise MmflError(f"{modality} file not found: {missing[0]}")
        parts = []
        for feats, model in self.parts:
            values, _ = featurize(samples, feats[modality], feature_cache_root(), progress=False)
            x = torch.from_numpy(np.ascontiguousarray(values))
            parts.append(model.encode(modality, x, self.card.eval_batch_size))
        return fuse(parts).numpy()

    def embed_manifest(self, manifest: Manifest) -> dict[str, tuple[list[str], np.ndarray]]:
        """Per modality: the ids of the rows holding it and their vectors, in manifest order."""
        data = self.part_tensors(manifest.samples, progress=True)
        out = {}
        for m in self.modalities:
            rows = data[0].rows_with(m)
            if len(rows) == 0:
                continue
            ids = [manifest.samples[int(i)].id for i in rows]
            out[m] = (ids, self.encode_rows(m, data, rows).numpy())
        return out

    # -- evaluate -------------------------------------------------------------------------------
    def evaluate(self, manifest: Manifest, pairing: str | None = None) -> dict[str, Any]:
        """Retrieval for every modality pair over rows holding both (as the run reports it: the
        first pair also unprefixed), and each class head's accuracy over labeled rows.

        ``pairing``: what counts as the right answer. ``row``: a row's own items; ``class``:
        every item with the same label, which needs a label on every row (without one all rows
        would share one class and score perfectly). Default: the model's own pairing, refused
        when it is ``class`` and the manifest has unlabeled rows. Scoring by row, a manifest of
        another data set may carry labels the model never had (no accuracy is reported for them)."""
        pairing = pairing or ("class" if self.card.pairing == "class" else "row")
        if pairing not in ("row", "class"):
            raise MmflError(f"pairing {pairing!r} is not row or class")
        by_class = pairing == "class"
        unlabeled = sum(1 for s in manifest.samples if s.label is None)
        if by_class and unlabeled:
            raise MmflError(
                f"manifest {manifest.path}: {unlabeled} of {len(manifest)} rows have no label; scoring by class "
                "(every same-class item is a right answer) needs a label on every row: add labels, or score "
                "each row's own items with --pairing row"
            )
        data = self.part_tensors(manifest.samples, progress=True)
        first = data[0]
        index = {m: torch.arange(len(first.labels)) for m in first.present}
        retrieval = pairwise_retrieval(
            lambda m, rows: self.encode_rows(m, data, rows),
            index,
            first.present,
            first.labels,
            self.pairs,
            by_class,
        )
        result: dict[str, Any] = {"rows": len(manifest), "retrieval": retrieval, "accuracy": {}}
        labeled = [s.label for s in manifest.samples if s.label is not None]
        unknown = sorted({lab for lab in labeled if lab not in set(self.card.classes)})
        if unknown and self.card.classes and by_class:
            raise MmflError(
                f"manifest {manifest.path}: label {unknown[0]!r} is not one of the model's "
                f"{len(self.card.classes)} classes (score by row with --pairing row)"
            )
        result["pairing"] = "class" if by_class else "row"
        if self.card.classes and labeled and not unknown:
            with torch.no_grad():
                for m in self.card.trained_heads:
                    rows = first.rows_with(m)
                    if len(rows) == 0:
                        continue
                    logits = self.model.heads[m](self.encode_rows(m, data, rows))
                    result["accuracy"][m] = accuracy(logits, first.labels[rows])
        return result


# -- loading ----------------------------------------------------------------------------------------
def load(path: str | Path) -> TrainedModel:
    """The trained model in ``path``: a run folder (``summary.json`` + ``final_model.pt``) or an
    export (``model_card.json`` + ``model.safetensors``)."""
    folder = Path(path)
    if (folder / CARD_FILE).exists():
        return _load_export(folder)
    if (folder / "summary.json").exists() or (folder / "plan.json").exists():
        return _load_run(folder)
    raise MmflError(f"{folder} is neither a run folder (summary.json) nor an export ({CARD_FILE})")


def _load_export(folder: Path) -> TrainedModel:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        card = ModelCard.model_validate_json((folder / CARD_FILE).read_text(encoding="utf-8"))
    except ValidationError as exc:
        e = exc.errors()[0]
        raise MmflError(
            f"invalid {folder / CARD_FILE}: {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MmflError(f"cannot read {folder / CARD_FILE}: {exc}") from None
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        raise MmflError(f"export {folder} has no {WEIGHTS_FILE}")
    blob = weights.read_bytes()
    if hashlib.sha256(blob).hexdigest() != card.weights_sha256:
        raise MmflError(f"{weights} does not match the card's weights_sha256 (altered or truncated)")
    if _metadata(blob).get("card_sha256") != card.content_sha256():
        raise MmflError(
            f"{folder / CARD_FILE} does not match the card its weights were exported with (edited?); refusing "
            "to build a model from it"
        )
    for name, digest in card.files.items():
        path = folder / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise MmflError(f"{path} is missing or does not match the card's hash (replaced or altered)")
    _check_shapes(card)
    try:
        state = load(blob)
    except SafetensorError as exc:
        raise MmflError(f"unreadable {weights}: {exc}") from None
    return TrainedModel(card, state)


def _metadata(blob: bytes) -> dict[str, str]:
    """A safetensors file's metadata, read from its header alone."""
    import struct

    try:
        (size,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8 : 8 + size])
    except (struct.error, ValueError):
        return {}
    return header.get("__metadata__") or {}


def _check_shapes(card: ModelCard) -> None:
    """Every encoder's input is what its architecture's featurizer makes (checked before any
    model is built, so a card cannot ask for an absurd allocation)."""
    parts = [m.encoders for m in card.members] if card.kind == "ensemble" else [card.encoders]
    for encoders in parts:
        architectures = {m: e.architecture for m, e in encoders.items()}
        try:
            feats = featurizers_for(architectures, card.image_size, card.image_channels)
        except (ValueError, KeyError) as exc:
            raise MmflError(f"model card: {exc}") from None
        for m, e in encoders.items():
            if list(feats[m].shape) != e.input_shape:
                raise MmflError(
                    f"model card: encoder {m} ({e.architecture}) takes inputs of shape {list(feats[m].shape)}, "
                    f"not {e.input_shape}"
                )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MmflError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MmflError(f"cannot read {path}: {exc}") from None


def _load_run(folder: Path) -> TrainedModel:
    weights = folder / "final_model.pt"
    if not (folder / "summary.json").exists() or not weights.exists():
        raise MmflError(
            f"run {folder} has no final model (summary.json and final_model.pt are written when the "
            "last round ends); an unfinished run can be continued with `mmfl simulate --resume`"
        )
    summary = RunSummary.read(folder)
    plan = _read_json(folder / "plan.json")
    raw = weights.read_bytes()
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a damaged file
        raise MmflError(f"unreadable {weights}: {type(exc).__name__}") from None
    blob = weights_blob(state, summary.run_id)
    card = card_from_run(
        summary, plan, hashlib.sha256(blob).hexdigest(), state, _delivered_final(folder, summary)
    )
    return TrainedModel(card, state)


def _delivered_final(folder: Path, summary: RunSummary) -> FinalMetrics | None:
    """The final metrics of the control a run delivered (None: it delivered its own model)."""
    delivery = summary.delivery
    if delivery is None or delivery.source != "control":
        return None
    chosen = next(c for c in delivery.candidates if c.strategy == delivery.delivered)
    return RunSummary.read(folder / chosen.folder).final


def weights_blob(state: dict[str, torch.Tensor], run_id: str, card_sha256: str | None = None) -> bytes:
    """The ``model.safetensors`` bytes of ``state`` (what ``weights_sha256`` hashes); an export's
    carry its card's content hash (:meth:`~mmfl.inference.card.ModelCard.content_sha256`)."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = {"format": "pt", "run_id": run_id}
    if card_sha256 is not None:
        metadata["card_sha256"] = card_sha256
    return save(tensors, metadata=metadata)


def _trained_heads(
    state: dict[str, torch.Tensor],
    architectures: dict[str, str],
    shapes: dict,
    embed_dim: int,
    classes: int,
    seed: int,
) -> list[str]:
    """Modalities whose head differs from its seeded initialisation. Adam leaves a parameter
    that never received a gradient exactly as initialised, so equality means never trained."""
    if not classes:
        return []
    init = MultiEncoder(architectures, shapes, embed_dim, classes, seed=seed).state_dict()
    return [
        m
        for m in architectures
        if not torch.equal(state[f"heads.{m}.linear.weight"], init[f"heads.{m}.linear.weight"])
    ]


def card_from_run(
    summary: RunSummary,
    plan: dict[str, Any],
    weights_sha256: str,
    state: dict[str, torch.Tensor],
    control_final: FinalMetrics | None = None,
) -> ModelCard:
    """The card of a finished run, from its ``summary.json``, ``plan.json`` and ``dataset.json``;
    ``control_final``: the final metrics of the site-free control it delivered, if it did (its
    weights then hold no site's data, so no site's privacy is listed)."""
    info = read_dataset_info(Path(plan["dataset_root"]))
    modalities = list(summary.modalities)
    delivery = summary.delivery
    if delivery is not None and delivery.source == "ensemble" and delivery.ensemble is not None:
        return _ensemble_card(summary, plan, weights_sha256, info, delivery.ensemble)
    architectures = {m: a for m, a in summary.server.architectures.items() if m in modalities}
    feats = featurizers_for(architectures, info.image_size, info.image_channels)
    encoders = _encoder_cards(architectures, info)
    privacy = [_privacy_card(s) for s in summary.sites if control_final is None]
    final = control_final if control_final is not None else summary.final
    return ModelCard(
        mmfl_version=__version__,
        run_id=summary.run_id,
        name=summary.name,
        strategy=summary.strategy,
        seed=summary.seed,
        rounds=len(summary.rounds),
        modalities=list(architectures),
        embed_dim=summary.embed_dim,
        encoders=encoders,
        image_size=info.image_size,
        image_channels=info.image_channels,
        classes=list(info.classes),
        trained_heads=_trained_heads(
            state,
            architectures,
            {m: f.shape for m, f in feats.items()},
            summary.embed_dim,
            len(info.classes),
            summary.seed,
        ),
        pairing=info.pairing,
        eval_batch_size=plan["spec"]["server"]["eval_batch_size"],
        dataset=summary.dataset.name,
        public_fingerprint=summary.dataset.public_fingerprint,
        privacy=privacy,
        metrics={"test": final.retrieval, "val": final.val_retrieval},
        delivered=delivery.delivered if delivery is not None else None,
        weights_sha256=weights_sha256,
    )


def _privacy_card(site: SiteSummary) -> SitePrivacyCard:
    """What a site of ``summary.json`` spent, as the model card lists it."""
    p = site.privacy
    return SitePrivacyCard(
        site=site.id,
        enabled=p.enabled,
        epsilon_spent=p.epsilon_spent,
        delta=p.delta,
        target_epsilon=p.target_epsilon,
        unit=p.unit,
    )


def _encoder_cards(architectures: dict[str, str], info: Any) -> dict[str, EncoderCard]:  # noqa: ANN401
    feats = featurizers_for(architectures, info.image_size, info.image_channels)
    cards = {}
    for m, name in architectures.items():
        featurizer = architecture(name, m).featurizer
        cards[m] = EncoderCard(
            architecture=name,
            featurizer=featurizer,
            featurizer_key=feats[m].key,
            input_shape=list(feats[m].shape),
            input_dtype=feats[m].dtype,
            preprocessing=PREPROCESSING.get(featurizer, featurizer),
        )
    return cards


def _ensemble_card(
    summary: RunSummary,
    plan: dict[str, Any],
    weights_sha256: str,
    info: Any,  # noqa: ANN401
    ensemble: EnsembleRecord,
) -> ModelCard:
    """The card of a run that delivered its sites' ensemble: one member per released site."""
    modalities = list(summary.modalities)
    members = [
        MemberCard(site=site, encoders=_encoder_cards({m: archs[m] for m in modalities}, info))
        for site, archs in zip(ensemble.sites, ensemble.architectures, strict=True)
    ]
    by_site = {s.id: s for s in summary.sites}
    privacy = [_privacy_card(by_site[site]) for site in ensemble.sites if site in by_site]
    return ModelCard(
        format_version=2,
        kind="ensemble",
        members=members,
        member_embed_dim=summary.embed_dim,
        mmfl_version=__version__,
        run_id=summary.run_id,
        name=summary.name,
        strategy=summary.strategy,
        seed=summary.seed,
        rounds=len(summary.rounds),
        modalities=modalities,
        embed_dim=summary.embed_dim * len(members),
        encoders={},
        image_size=info.image_size,
        image_channels=info.image_channels,
        classes=list(info.classes),
        trained_heads=[],
        pairing=info.pairing,
        eval_batch_size=plan["spec"]["server"]["eval_batch_size"],
        dataset=summary.dataset.name,
        public_fingerprint=summary.dataset.public_fingerprint,
        privacy=privacy,
        metrics={"test": ensemble.test, "val": ensemble.val},
        delivered="ensemble",
        weights_sha256=weights_sha256,
    )


def load_eval_manifest(path: Path, model: TrainedModel) -> Manifest:
    """A manifest to evaluate or embed, every row validated; columns of modalities the model
    has no encoder for are left out, and it must hold at least one the model encodes."""
    full = load_manifest(path)
    if not set(full.modalities) & set(model.modalities):
        raise MmflError(
            f"manifest {path} holds {', '.join(full.modalities)}; the model encodes "
            f"{', '.join(model.modalities)}"
        )
    kept = [
        Sample(s.id, {m: v for m, v in s.values.items() if m in model.modalities}, s.label, s.group)
        for s in full.samples
    ]
    return Manifest(full.path, kept, tuple(m for m in full.modalities if m in model.modalities))
