"""Fuzzing (hypothesis) of everything that crosses a trust boundary: the protocol decoders and
array checks in both directions, manifests, configs. Each input is either accepted as valid or
refused with the module's own one-line error; nothing else may happen (no crash, no other
exception, nothing invalid accepted). CI runs the ``ci`` profile; ``benchmarks/security/fuzz.py`` runs
the ``long`` one (``MMFL_FUZZ_PROFILE=long``) and records the counts."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmfl.config import FederationSpec, load_config
from mmfl.data.manifest import load_manifest
from mmfl.errors import ConfigError, ManifestError
from mmfl.protocols import messages as msg
from mmfl.protocols.records import (
    ProtocolError,
    check_represent_instruction,
    check_representations,
    check_weights,
    decode,
)

settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    database=None,
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("MMFL_FUZZ_EXAMPLES", "5000")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
FUZZ = settings.get_profile(os.environ.get("MMFL_FUZZ_PROFILE", "ci"))

KINDS = [
    msg.CapabilitiesQuery,
    msg.Capabilities,
    msg.RepresentInstruction,
    msg.RepresentReply,
    msg.WeightsInstruction,
    msg.WeightsReply,
    msg.EvaluateInstruction,
    msg.EvaluateReply,
]
SETTINGS = {
    "local_epochs": 1, "batch_size": 32, "lr": 0.001, "weight_decay": 0.0, "public_batch_size": 128,
    "contrast_temperature": 0.5, "interintra_weight": 0.5,
}  # fmt: skip
PRIVACY = {"enabled": True, "target_epsilon": 8.0, "delta": 1e-5, "epsilon_spent": 1.5, "noisy_units": 300}
VALID = {
    msg.CapabilitiesQuery: {"run_id": "r", "public_fingerprint": "f"},
    msg.Capabilities: {
        "site_id": "s", "modalities": ["image"], "architectures": {"image": "mlp"}, "classes": 10,
        "device": {"kind": "cpu", "name": "cpu"}, "public_fingerprint": "f", "privacy": PRIVACY,
    },
    msg.RepresentInstruction: {
        "run_id": "r", "round": 1, "public_fingerprint": "f", "public_indices": [0, 1],
        "rows": {"image": [0, 1]}, "embed_dim": 8, "settings": SETTINGS,
    },
    msg.RepresentReply: {"site_id": "s", "round": 1, "privacy": PRIVACY, "metrics": {"loss": 0.5}},
    msg.WeightsInstruction: {"run_id": "r", "round": 1, "settings": SETTINGS},
    msg.WeightsReply: {"site_id": "s", "round": 1, "architecture": "mlp", "privacy": PRIVACY},
    msg.EvaluateInstruction: {"run_id": "r", "round": 1},
    msg.EvaluateReply: {"site_id": "s", "round": 1, "metrics": {"acc": 0.9}},
}  # fmt: skip

EXTREMES = [-1, 0, -1e-9, 2**40, 10**12, float("nan"), float("inf"), -float("inf"), 1e308, True]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


def paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON object (to replace or drop one field)."""
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            out.append((*prefix, k))
            out.extend(paths(v, (*prefix, k)))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> tuple[type, str]:
    kind = draw(st.sampled_from(KINDS))
    doc = json.loads(json.dumps(VALID[kind]))
    for _ in range(draw(st.integers(1, 3))):
        choices = paths(doc)
        if not choices:
            break
        path = draw(st.sampled_from(choices))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        how = draw(st.sampled_from(["drop", "replace", "extreme", "extreme"]))
        if how == "drop":
            parent.pop(path[-1], None)
        elif how == "replace" or not isinstance(parent[path[-1]], int | float | list):
            parent[path[-1]] = draw(json_values)
        elif isinstance(parent[path[-1]], list):  # an absurd declared size
            parent[path[-1]] = parent[path[-1]] * draw(st.sampled_from([0, 2, 50]))
        else:
            parent[path[-1]] = draw(st.sampled_from(EXTREMES))
    if draw(st.booleans()):
        doc[draw(st.text(max_size=8))] = draw(json_values)
    text = json.dumps(doc, allow_nan=True)
    return kind, text if draw(st.integers(0, 9)) else text[: draw(st.integers(0, len(text)))]


def _finite_numbers(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite_numbers(v) for v in value)
    return True


@FUZZ
@given(mutated())
def test_decoders_accept_only_valid_messages(case: tuple[type, str]) -> None:
    kind, text = case
    content = RecordDict({"meta": ConfigRecord({"json": text})})
    try:
        message = decode(content, kind)
    except ProtocolError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    data = message.model_dump()
    assert message.protocol == msg.PROTOCOL_VERSION
    assert _finite_numbers(data), f"accepted a non-finite number: {text}"
    privacy = data.get("privacy")
    if privacy is not None:
        assert privacy["epsilon_spent"] >= 0 and (privacy["noisy_units"] or 0) >= 0
    if kind is msg.RepresentInstruction:
        assert 1 <= message.embed_dim <= msg.MAX_EMBED_DIM
        assert len(message.public_indices) <= msg.MAX_PUBLIC_ROWS
    if "settings" in data:
        s = message.settings
        assert s.local_epochs <= msg.MAX_LOCAL_EPOCHS and s.batch_size <= msg.MAX_BATCH


def test_absurd_declared_sizes_are_refused() -> None:
    base = VALID[msg.RepresentInstruction]
    for field, value in (
        ("public_indices", [0] * (msg.MAX_PUBLIC_ROWS + 1)),
        ("embed_dim", msg.MAX_EMBED_DIM + 1),
        ("settings", {**SETTINGS, "local_epochs": msg.MAX_LOCAL_EPOCHS + 1}),
        ("settings", {**SETTINGS, "batch_size": 10**12}),
        ("settings", {**SETTINGS, "lr": float("inf")}),
    ):
        text = json.dumps({**base, field: value}, allow_nan=True)
        with pytest.raises(ProtocolError, match="malformed RepresentInstruction"):
            decode(RecordDict({"meta": ConfigRecord({"json": text})}), msg.RepresentInstruction)


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_decoders_refuse_garbage(raw: bytes | str) -> None:
    for kind in KINDS:
        with pytest.raises(ProtocolError):
            decode(RecordDict({"meta": ConfigRecord({"json": raw})}), kind)


DTYPES = ["float32", "float16", "float64", "int32", "int8", "bool", "complex64", "uint8"]


@st.composite
def arrays_case(draw: st.DrawFn) -> tuple[dict, dict, int]:
    embed = draw(st.integers(1, 6))
    expected = {
        m: draw(st.integers(0, 5))
        for m in draw(st.sets(st.sampled_from(["image", "text", "audio"]), max_size=3))
    }
    arrays = {}
    for m in draw(st.sets(st.sampled_from(["image", "text", "audio", "x"]), max_size=4)):
        shape = draw(st.sampled_from([
            (expected.get(m, 1), embed), (draw(st.integers(0, 6)), draw(st.integers(0, 7))), (3,), (2, embed, 1),
        ]))  # fmt: skip
        a = np.zeros(shape, dtype=draw(st.sampled_from(DTYPES)))
        if a.size and a.dtype.kind in "fc" and draw(st.booleans()):
            a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e30]))
        arrays[m] = a
    return arrays, expected, embed


@FUZZ
@given(arrays_case(), st.integers(0, 400))
def test_representations_are_accepted_exactly_when_valid(case: tuple, max_bytes: int) -> None:
    arrays, expected, embed = case
    valid = (
        (bool(arrays) or not expected)
        and all(
            m in expected
            and a.dtype in (np.float32, np.float16, np.int8)
            and a.shape == (expected[m], embed)
            and (a.any(axis=1).all() if a.dtype == np.int8 else np.isfinite(a).all())
            for m, a in arrays.items()
        )
        and sum(a.nbytes for a in arrays.values()) <= max_bytes
    )
    try:
        check_representations(arrays, expected, embed, max_bytes=max_bytes)
        assert valid, f"accepted {[(m, a.dtype, a.shape) for m, a in arrays.items()]} for {expected}"
    except ProtocolError:
        assert not valid


@FUZZ
@given(
    st.lists(st.integers(-3, 12), max_size=8),
    st.dictionaries(
        st.sampled_from(["image", "text"]), st.lists(st.integers(-3, 12), max_size=6), max_size=2
    ),
)
def test_a_site_refuses_instructions_outside_its_public_set(indices: list[int], rows: dict) -> None:
    instruction = msg.RepresentInstruction.model_validate(
        {**VALID[msg.RepresentInstruction], "public_indices": indices, "rows": rows}
    )
    arrays = {m: np.zeros((len(r), 8), np.float32) for m, r in rows.items()}
    valid = all(0 <= i < 10 for i in indices) and all(set(r) <= set(indices) for r in rows.values())
    try:
        check_represent_instruction(instruction, arrays, public_rows=10)
        assert valid
    except ProtocolError:
        assert not valid


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["w", "b", "z"]),
        st.tuples(st.sampled_from(DTYPES), st.sampled_from([(2, 3), (3,), (3, 2), ()])),
        max_size=3,
    ),
    st.booleans(),
)
def test_weights_are_accepted_exactly_when_valid(spec: dict, poison: bool) -> None:
    reference = {"w": (2, 3), "b": (3,)}
    arrays = {k: np.ones(shape, dtype=d) for k, (d, shape) in spec.items()}
    if poison and "w" in arrays and arrays["w"].dtype.kind == "f" and arrays["w"].size:
        arrays["w"].flat[0] = np.nan
    valid = set(arrays) == set(reference) and all(
        a.shape == reference[k] and a.dtype.kind == "f" and np.isfinite(a).all() for k, a in arrays.items()
    )
    try:
        check_weights(arrays, reference)
        assert valid, f"accepted {[(k, a.dtype, a.shape) for k, a in arrays.items()]}"
    except ProtocolError:
        assert not valid


MANIFEST_CELLS = st.one_of(
    st.none(),
    st.text(max_size=30),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)


@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["id", "image", "text", "audio", "label", "group", "x"]),
            MANIFEST_CELLS,
            max_size=6,
        ),
        max_size=6,
    ),
    st.binary(max_size=40),
    st.sampled_from(["jsonl", "csv"]),
)
@settings(FUZZ, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_manifests_load_or_are_refused_in_one_line(
    tmp_path: Path, rows: list[dict], tail: bytes, ext: str
) -> None:
    path = tmp_path / f"m.{ext}"
    if ext == "jsonl":
        data = "".join(json.dumps(r) + "\n" for r in rows).encode() + tail
    else:
        data = (
            "id,image,text,label\n"
            + "".join(
                ",".join(str(r.get(k, "")) for k in ("id", "image", "text", "label")) + "\n" for r in rows
            )
        ).encode() + tail
    path.write_bytes(data)
    try:
        manifest = load_manifest(path, check_files=True)
    except ManifestError as exc:
        assert "\n" not in str(exc)
        return
    for sample in manifest.samples:  # anything accepted names real files and non-empty text
        assert sample.values and all(Path(v).is_file() for m, v in sample.values.items() if m != "text")


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "rounds",
                    "seed",
                    "embed_dim",
                    "strategy",
                    "server.epochs_per_round",
                    "cream.public_subset",
                    "train.lr",
                    "train.batch_size",
                    "server.round_timeout",
                    "partition.alpha",
                    "sites",
                    "nonsense.key",
                    "fedavg.server_momentum",
                ]
            ),
            json_values.map(lambda v: json.dumps(v, allow_nan=True)) | st.text(max_size=15),
        ),
        max_size=3,
    )
)
def test_configs_load_or_are_refused_in_one_line(overrides: list[tuple[str, str]]) -> None:
    try:
        spec = load_config(FederationSpec, overrides=[f"{k}={v}" for k, v in overrides])
    except ConfigError as exc:
        assert "\n" not in str(exc).strip()
        return
    assert spec.rounds >= 1 and spec.embed_dim >= 2
    assert _finite_numbers(spec.model_dump(mode="python"))
