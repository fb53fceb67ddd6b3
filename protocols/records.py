"""Encoding of protocol messages to Flower ``RecordDict`` and back, with validation.

Layout of every payload: ``meta`` (a ``ConfigRecord`` holding the message as JSON under
``json``) and, when arrays travel, ``arrays`` (an ``ArrayRecord``: one array per modality, or a
model's weights). Decoding checks the version and the fields; :func:`check_representations`
checks arrays against what the instruction asked for. Any violation raises
:class:`ProtocolError` with a one-line reason; callers drop the message and log the reason.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from pydantic import ValidationError

from mmfl.protocols.messages import PROTOCOL_VERSION, Message, RepresentInstruction

M = TypeVar("M", bound=Message)

DEFAULT_MAX_PAYLOAD_BYTES = 1 << 30
ALLOWED_DTYPES = (np.dtype("float32"), np.dtype("float16"), np.dtype("int8"))
INT8_MAX = 127


class ProtocolError(Exception):
    """A message that does not follow the protocol; the text is the reason."""


def encode(
    message: Message,
    arrays: Mapping[str, np.ndarray] | None = None,
    metrics: Mapping[str, float] | None = None,
) -> RecordDict:
    """Build the ``RecordDict`` for ``message`` (+ arrays, + a Flower ``MetricRecord``)."""
    content = RecordDict({"meta": ConfigRecord({"json": message.model_dump_json()})})
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    if metrics is not None:
        content["metrics"] = MetricRecord(dict(metrics))
    return content


def decode(content: RecordDict, kind: type[M]) -> M:
    """Parse ``content['meta']`` as ``kind``; wrong version or fields raise ProtocolError."""
    try:
        raw = content["meta"]["json"]
    except KeyError:
        raise ProtocolError("no 'meta' record with the message JSON") from None
    if not isinstance(raw, str):
        raise ProtocolError("'meta.json' is not text")
    try:
        message = kind.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        # A peer chooses the field names: escape them so the reason stays one printable line.
        where = json.dumps(".".join(str(p) for p in first["loc"]) or kind.__name__)[1:-1][:80]
        raise ProtocolError(f"malformed {kind.__name__}: {where}: {first['msg']}") from None
    if message.protocol != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {message.protocol}, expected {PROTOCOL_VERSION}")
    return message


def arrays_of(content: RecordDict) -> dict[str, np.ndarray]:
    """The arrays of a payload (empty when it carries none)."""
    if "arrays" not in content.array_records:
        return {}
    return {k: v.numpy() for k, v in content.array_records["arrays"].items()}


def payload_bytes(content: RecordDict) -> int:
    """Bytes of array data plus the JSON meta (what travels, before Flower's framing)."""
    total = 0
    for record in content.array_records.values():
        total += sum(len(a.data) for a in record.values())
    for record in content.config_records.values():
        total += sum(len(str(v)) for v in record.values())
    return total


def check_representations(
    arrays: Mapping[str, np.ndarray],
    expected_rows: Mapping[str, int],
    embed_dim: int,
    allowed: set[str] | None = None,
    required: set[str] | frozenset[str] = frozenset(),
    max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> None:
    """The one check of representations that cross the wire, in either direction.

    Arrays must be one per allowed modality (default: those with ``expected_rows``), every
    ``required`` modality present, each 2-D (rows, embed_dim), float32/16 and finite or int8
    with no all-zero row (an int8 row is a direction, see :func:`to_wire`), with the row count
    the instruction implies, and fit in ``max_bytes`` together. When rows were asked for, at
    least one array must come."""
    allowed = set(expected_rows) if allowed is None else allowed
    if expected_rows and not arrays:
        raise ProtocolError("no representations in the payload")
    missing = sorted(set(required) - set(arrays))
    if missing:
        raise ProtocolError(f"no {missing[0]} representations in the payload")
    total = 0
    for modality, arr in arrays.items():
        if modality not in allowed:
            raise ProtocolError(f"unexpected modality {modality!r} (allowed: {sorted(allowed)})")
        if arr.dtype not in ALLOWED_DTYPES:
            raise ProtocolError(f"{modality}: dtype {arr.dtype} (expected float32, float16 or int8)")
        if arr.ndim != 2 or arr.shape[1] != embed_dim:
            raise ProtocolError(f"{modality}: shape {arr.shape}, expected (rows, {embed_dim})")
        if arr.shape[0] != expected_rows[modality]:
            raise ProtocolError(f"{modality}: {arr.shape[0]} rows, expected {expected_rows[modality]}")
        if arr.dtype.kind == "i":
            if not arr.any(axis=1).all():
                raise ProtocolError(f"{modality}: an int8 row of zeros has no direction")
        elif not np.isfinite(arr).all():
            raise ProtocolError(f"{modality}: contains NaN or infinity")
        total += arr.nbytes
    if total > max_bytes:
        raise ProtocolError(f"payload of {total} bytes exceeds the limit of {max_bytes}")


def check_represent_instruction(
    instruction: RepresentInstruction,
    arrays: Mapping[str, np.ndarray],
    public_rows: int,
    max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> None:
    """A site's check of a ``train.represent`` instruction and its global representations:
    indices inside its public set, each modality's rows among them, and one array of global
    representations per modality with rows, checked as the coordinator checks replies."""
    indices = instruction.public_indices
    if any(i < 0 or i >= public_rows for i in indices):
        raise ProtocolError(f"public index outside 0..{public_rows - 1}")
    chosen = set(indices)
    for modality, rows in instruction.rows.items():
        if not chosen.issuperset(rows):
            raise ProtocolError(f"{modality}: rows outside this round's public indices")
    mix = instruction.mix
    if mix is not None:
        lists = [
            mix.first,
            mix.second,
            *(r for own in mix.own_rows.values() for r in (own.first, own.second)),
        ]
        if any(i < 0 or i >= public_rows for rows in lists for i in rows):
            raise ProtocolError(f"mix plan: public index outside 0..{public_rows - 1}")
        if arrays:
            raise ProtocolError("global representations sent with a mix plan")
        return
    check_representations(
        arrays,
        {m: len(r) for m, r in instruction.rows.items()},
        instruction.embed_dim,
        required=set(instruction.rows),
        max_bytes=max_bytes,
    )


def check_weights(
    arrays: Mapping[str, np.ndarray],
    reference: Mapping[str, tuple[int, ...]],
    max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> None:
    """Model weights in either direction: exactly the reference's keys and shapes, floating
    point, finite, within ``max_bytes``."""
    missing = sorted(set(reference) - set(arrays))
    extra = sorted(set(arrays) - set(reference))
    if missing or extra:
        raise ProtocolError(f"weights {'lack ' + missing[0] if missing else 'have an unknown ' + extra[0]}")
    total = 0
    for key, arr in arrays.items():
        if tuple(arr.shape) != tuple(reference[key]):
            raise ProtocolError(f"{key}: shape {tuple(arr.shape)}, expected {tuple(reference[key])}")
        if arr.dtype.kind != "f":
            raise ProtocolError(f"{key}: dtype {arr.dtype} (expected floating point)")
        if not np.isfinite(arr).all():
            raise ProtocolError(f"{key}: contains NaN or infinity")
        total += arr.nbytes
    if total > max_bytes:
        raise ProtocolError(f"payload of {total} bytes exceeds the limit of {max_bytes}")


def to_wire(values: np.ndarray, dtype: str) -> np.ndarray:
    r"""Compress representations (unit vectors, one per row) for the wire.

    ``float16`` halves the bytes. ``int8`` quarters them: each row is scaled so that its
    largest component is ±127 and rounded, :math:`q = \mathrm{round}(127\, x / \lVert x
    \rVert_\infty)`. The scale is not sent: the receiver restores the unit norm
    (:func:`from_wire`), so an int8 row carries a direction only."""
    if dtype != "int8":
        return np.ascontiguousarray(values.astype(np.dtype(dtype), copy=False))
    peak = np.abs(values).max(axis=1, keepdims=True, initial=0.0)
    scaled = values * (INT8_MAX / np.where(peak > 0, peak, 1.0))
    return np.ascontiguousarray(np.clip(np.rint(scaled), -INT8_MAX, INT8_MAX).astype(np.int8))


def from_wire(values: np.ndarray) -> np.ndarray:
    """Float32 representations of a wire array; int8 rows are scaled back to unit norm."""
    if values.dtype.kind != "i":
        return values.astype(np.float32, copy=False)
    rows = values.astype(np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)
