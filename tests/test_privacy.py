"""DP-SGD at the site: accountant reference values, the ledger, sensitivity, public gradients."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import create_accountant
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer

from mmfl.client.ledger import LedgerError, PrivacyLedger, epsilon_of
from mmfl.client.privacy import PoissonSampler, PrivateTraining, private_losses
from mmfl.config import PrivacyConfig
from mmfl.data.tensors import Tensors
from mmfl.models.losses import paired_contrastive, positives_matrix
from mmfl.models.multimodal import MultiEncoder

# ---------------------------------------------------------------------- accountant reference values


@pytest.mark.parametrize(
    ("accountant", "q", "sigma", "steps", "delta", "expected"),
    [
        ("rdp", 0.04, 1.5, 2250, 1e-5, 7.32911117143),  # opacus tests/accountants_test.py
        ("prv", 0.04, 1.5, 2249, 1e-5, 6.777395712150674),  # same file, int(90 // 0.04) steps
        ("rdp", 150 / 60000, 1.3, 6000, 1e-5, 0.7242234026109595),  # TF-Privacy compute_dp_sgd_privacy_test
        ("rdp", 100 / 100_000, 1.0, 30_000, 1e-7, 1.4154988495444842),  # same test
    ],
)
def test_accountant_reproduces_published_values(accountant, q, sigma, steps, delta, expected) -> None:
    assert abs(epsilon_of([[sigma, q, steps]], delta, accountant) - expected) < 1e-6


def test_rounds_across_a_ledger_reload_equal_one_run(tmp_path: Path) -> None:
    sigma, q, per_round = 1.1, 0.05, 40
    ledger = PrivacyLedger(tmp_path, "site-a", "f" * 64)
    book = ledger.create("rdp", 1e-5, 10.0, "sample")
    acc = create_accountant("rdp")
    for r in range(1, 4):
        for _ in range(per_round):
            acc.step(noise_multiplier=sigma, sample_rate=q)
        book = ledger.commit(book, "run-1", r, acc.history, sigma, q, per_round)
    # A new process: nothing but the files on disk.
    reloaded = PrivacyLedger(tmp_path, "site-a", "f" * 64).load()
    assert reloaded is not None and [e.round for e in reloaded.entries] == [1, 2, 3]
    acc2 = create_accountant("rdp")
    acc2.history = [tuple(h) for h in reloaded.history]
    for r in range(4, 6):
        for _ in range(per_round):
            acc2.step(noise_multiplier=sigma, sample_rate=q)
        reloaded = PrivacyLedger(tmp_path, "site-a", "f" * 64).commit(
            reloaded, "run-2", r, acc2.history, sigma, q, per_round
        )
    one_shot = epsilon_of([[sigma, q, 5 * per_round]], 1e-5, "rdp")
    assert abs(PrivacyLedger.spent(reloaded) - one_shot) < 1e-9
    assert abs(reloaded.entries[-1].epsilon_after - one_shot) < 1e-9
    assert PrivacyLedger.project(reloaded, sigma, q, per_round) == pytest.approx(
        epsilon_of([[sigma, q, 6 * per_round]], 1e-5, "rdp")
    )


def test_a_deleted_or_corrupted_ledger_fails_closed_until_reset(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path, "s", "a" * 64)
    book = ledger.create("rdp", 1e-5, 8.0, "sample")
    ledger.commit(book, "r", 1, [(1.0, 0.1, 10)], 1.0, 0.1, 10)
    data = ledger.path.read_bytes()
    ledger.path.write_bytes(data.replace(b'"steps": 10', b'"steps": 1'))
    with pytest.raises(LedgerError, match="does not match its checksum"):
        ledger.load()
    ledger.path.unlink()
    with pytest.raises(LedgerError, match="is missing although this site spent privacy"):
        ledger.load()
    (tmp_path / "privacy" / "ledgers.json").unlink()  # even with the registry gone too ...
    with pytest.raises(LedgerError, match="is missing"):
        ledger.load(expected_existing=True)  # ... the site's model records say DP training happened
    with pytest.raises(Exception, match="needs a reason"):
        ledger.reset(" ", "rdp", 1e-5, 8.0, "sample")
    fresh = ledger.reset("ledger disk replaced after failure; ticket 42", "rdp", 1e-5, 8.0, "sample")
    assert fresh.resets[0].reason.startswith("ledger disk replaced") and PrivacyLedger.spent(fresh) == 0.0
    assert ledger.load() is not None


# --------------------------------------------------------------------------------- sensitivity


def paired_model(seed: int = 0) -> MultiEncoder:
    return MultiEncoder(
        {"image": "mlp", "text": "bag"}, {"image": (1, 8, 8), "text": (6,)}, 16, num_classes=3, seed=seed
    )


def batch(n: int, seed: int = 0) -> Tensors:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n, 6), generator=g)
    present = {"image": torch.ones(n, dtype=torch.bool), "text": torch.ones(n, dtype=torch.bool)}
    present["text"][-2:] = False  # two rows miss their text: class-head rows
    return Tensors(
        {"image": torch.rand(n, 1, 8, 8, generator=g), "text": ids},
        present,
        torch.randint(0, 3, (n,), generator=g),
    )


def clipped_sum(model: MultiEncoder, loss_fn, x: Tensors, c: float) -> torch.Tensor:
    """Opacus' clipped per-sample gradient sum S (noise 0), flattened."""
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = DPOptimizer(
        torch.optim.SGD(params, lr=0.0), noise_multiplier=0.0, max_grad_norm=c, expected_batch_size=len(x)
    )
    opt.zero_grad()
    loss_fn(model, x).backward()
    opt.pre_step()
    out = torch.cat([p.grad.flatten() for p in params]) * len(
        x
    )  # pre_step divides by the expected batch size
    gsm._close()
    return out


def test_one_removed_private_sample_moves_the_clipped_sum_by_at_most_c() -> None:
    c, n = 0.05, 12
    globals_ = {
        "image": torch.nn.functional.normalize(torch.randn(40, 16), dim=1),
        "text": torch.nn.functional.normalize(torch.randn(40, 16), dim=1),
    }
    glabels = {"image": torch.randint(0, 3, (40,)), "text": torch.randint(0, 3, (40,))}
    x = batch(n)

    def fixed_negatives(model, b):
        return private_losses(model, b, globals_, glabels, True, 0.1, torch.device("cpu")).mean()

    def in_batch(model, b):  # the coupled loss DP-SGD must not use
        za, zb = model("image", b.inputs["image"]), model("text", b.inputs["text"])
        unused_heads = 0.0 * (
            model.heads["image"](za).sum() + model.heads["text"](zb).sum()
        )  # Opacus wants every param
        return paired_contrastive(za, zb, positives_matrix(b.labels, b.labels, False), 0.1) + unused_heads

    worst = {"fixed": 0.0, "in-batch": 0.0}
    for name, fn in (("fixed", fixed_negatives), ("in-batch", in_batch)):
        full = clipped_sum(paired_model(), fn, x, c)
        for k in range(n):
            keep = [i for i in range(n) if i != k]
            without = clipped_sum(paired_model(), fn, x.subset(keep), c)
            worst[name] = max(worst[name], float((full - without).norm()))
    assert worst["fixed"] <= c * (1 + 1e-4)
    assert worst["in-batch"] > 1.05 * c  # the same check catches the coupled loss


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_public_gradient_reaches_the_parameters_and_privacy_is_accounted(mode: str) -> None:
    config = PrivacyConfig(enabled=True, max_grad_norm=1.0, grad_sample_mode=mode)
    x = batch(10)
    globals_ = {m: torch.nn.functional.normalize(torch.randn(20, 16), dim=1) for m in ("image", "text")}
    glabels = {m: torch.randint(0, 3, (20,)) for m in ("image", "text")}
    public_x = torch.rand(6, 1, 8, 8)

    def run(with_public: bool) -> list[torch.Tensor]:
        model = paired_model()
        dp = PrivateTraining(model, config, 0.0, 0.0, 0.0, 0.1, 10, [], torch.Generator().manual_seed(0))
        assert dp.mode == mode
        public = (lambda: model("image", public_x).sum() * 3.0) if with_public else None
        dp.step(lambda: private_losses(model, x, globals_, glabels, False, 0.1, torch.device("cpu")), public)
        grads = [p.grad.clone() for p in model.parameters()]
        assert dp.history == [(0.0, 0.1, 1)]
        dp.close()
        return grads

    without, with_public = run(False), run(True)
    model = paired_model()
    expected = torch.autograd.grad(
        model("image", public_x).sum() * 3.0, list(model.parameters()), allow_unused=True
    )
    moved = 0
    for a, b, e in zip(without, with_public, expected, strict=True):
        delta = b - a
        if e is None:
            assert torch.allclose(delta, torch.zeros_like(delta))
        else:
            assert torch.allclose(delta, e, atol=1e-5)
            moved += int(e.abs().sum() > 0)
    assert moved >= 3  # the image tower's layers received the public gradient


def test_group_sampling_takes_one_row_per_group() -> None:
    groups = ["p1", "p1", "p1", "p2", "p3", "p3"]
    sampler = PoissonSampler.build(groups, 6, 2, np.random.default_rng(0))
    assert len(sampler.groups) == 3 and math.isclose(sampler.sample_rate, 2 / 3)
    for _ in range(50):
        rows = sampler.draw()
        assert len({groups[i] for i in rows}) == len(rows)
    with pytest.raises(ValueError, match="group id on every private row"):
        PoissonSampler.build(["a", None], 2, 1, np.random.default_rng(0))


def test_ledger_json_is_readable_by_people(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path, "s", "b" * 64)
    book = ledger.create("prv", 1e-6, 3.0, "group")
    ledger.commit(book, "r", 1, [(1.2, 0.05, 30)], 1.2, 0.05, 30)
    data = json.loads(ledger.path.read_text())
    assert data["entries"][0]["epsilon_after"] > 0 and data["unit"] == "group" and data["accountant"] == "prv"
