"""Export a trained model: ``model.safetensors`` (weights, whose metadata carry the card's
content hash), ``model_card.json`` (how to rebuild and feed it, what it saw, ε per site, the
SHA-256 of every file) and one ``encoder-<modality>.pt2`` per modality (``torch.export``
programs of the trainable part: featurized input in, unit vectors out, any batch size).

The export is written into a temporary sibling folder and renamed into place: a failed export
leaves nothing behind, and an existing export is replaced only with ``overwrite``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from mmfl.errors import MmflError
from mmfl.files import staged_folder
from mmfl.inference.card import CARD_FILE, WEIGHTS_FILE, EncoderCard
from mmfl.inference.trained import TrainedModel, weights_blob

PROGRAM_FILE = "encoder-{modality}.pt2"


def _example(enc: EncoderCard) -> torch.Tensor:
    if enc.input_dtype.startswith("int"):
        return torch.ones((2, *enc.input_shape), dtype=torch.long)
    return torch.zeros((2, *enc.input_shape), dtype=torch.float32)


def export_programs(model: TrainedModel, folder: Path) -> list[str]:
    """One ``torch.export`` program per modality encoder (an ensemble: per member and modality,
    ``encoder-<modality>-<site>.pt2``, whose unit vectors concatenate, divided by sqrt(K), into
    the ensemble's); returns the file names written."""
    written = []
    members = model.card.members if model.card.kind == "ensemble" else [None]
    for (_, part), member in zip(model.parts, members, strict=True):
        encoders = member.encoders if member is not None else model.card.encoders
        for m in model.modalities:
            encoder = part.encoders[m].eval()
            batch = torch.export.Dim("batch", min=1)
            program = torch.export.export(encoder, (_example(encoders[m]),), dynamic_shapes=({0: batch},))
            name = PROGRAM_FILE.format(modality=m)
            if member is not None:
                name = name.replace(".pt2", f"-{member.site}.pt2")
            torch.export.save(program, folder / name)
            written.append(name)
    return written


def export_model(model: TrainedModel, out: Path, overwrite: bool = False, programs: bool = True) -> Path:
    """Write the export folder ``out``; returns it."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise MmflError(f"{out} already exists; choose another --out or pass --force")
    with staged_folder(out) as staging:
        blob = weights_blob(model.state_dict(), model.card.run_id, model.card.content_sha256())
        (staging / WEIGHTS_FILE).write_bytes(blob)
        written = export_programs(model, staging) if programs else []
        files = {name: hashlib.sha256((staging / name).read_bytes()).hexdigest() for name in written}
        card = model.card.model_copy(
            update={"weights_sha256": hashlib.sha256(blob).hexdigest(), "files": files}
        )
        (staging / CARD_FILE).write_text(card.model_dump_json(indent=2), encoding="utf-8")
    return out
