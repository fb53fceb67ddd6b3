"""DP-SGD at the site: accountant reference values, the ledger and the budget policy, sensitivity,
secure noise, Poisson sampling, public gradients."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import create_accountant
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer

from mmfl.client.privacy import secure_random
from mmfl.client.privacy.budget import PrivacyBudget, PrivacyRefusal, plan_noise
from mmfl.client.privacy.dp_sgd import PoissonSampler, PrivateTraining, private_losses, training_units
from mmfl.client.privacy.ledger import LedgerError, PrivacyLedger, add_segment, epsilon_of
from mmfl.client.privacy.secure_random import SecureRandom
from mmfl.config import PrivacyConfig
from mmfl.data.partition import holdout_split
from mmfl.data.tensors import Tensors
from mmfl.errors import MmflError
from mmfl.models.losses import paired_contrastive, positives_matrix
from mmfl.models.multimodal import MultiEncoder

DATA = "d" * 64

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


# ------------------------------------------------------------------------------ ledger and budget


def budget(tmp_path: Path, **privacy) -> PrivacyBudget:
    config = PrivacyConfig(enabled=True, **{"target_epsilon": 8.0, **privacy})
    return PrivacyBudget(tmp_path, "site-a", config)


def spend_rounds(b: PrivacyBudget, rounds: int, run: str = "run-1", batch: int = 32, first: int = 1):
    ledger = b.open(DATA, 600)
    for r in range(first, first + rounds):
        plan = b.plan(ledger, DATA, batch, 1)
        ledger = b.commit(ledger, plan, run, r)
    return ledger


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_ledger_epsilon_equals_opacus_across_restarts(tmp_path: Path, accountant: str) -> None:
    b = budget(tmp_path, accountant=accountant, noise_multiplier=1.1)
    spend_rounds(b, 3)
    # A new process: nothing but the files on disk.
    b2 = budget(tmp_path, accountant=accountant, noise_multiplier=1.1)
    spend_rounds(b2, 2, "run-2", first=4)
    reloaded = PrivacyLedger(tmp_path, "site-a").load()
    assert reloaded is not None and [e.round for e in reloaded.entries] == [1, 2, 3, 4, 5]
    (sigma, q, steps), count = reloaded.history[0], reloaded.count_releases[0]
    assert len(reloaded.history) == 1 and steps == 5 * round(count.units / 32) and q == 32 / count.units
    acc = create_accountant(accountant)  # Opacus itself, for the same steps taken one at a time
    for _ in range(int(steps)):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    opacus = acc.get_epsilon(delta=1e-5)
    assert abs(reloaded.spent() - (opacus + count.epsilon)) < 1e-9
    assert abs(reloaded.entries[-1].epsilon_after - reloaded.spent()) < 1e-9


def test_the_size_leaves_only_as_a_noisy_count(tmp_path: Path) -> None:
    b = budget(tmp_path, count_epsilon=0.5)
    ledger = b.open(DATA, 600)
    again = b.open(DATA, 600)  # released once per data set, not per round
    assert len(again.count_releases) == 1 and again.count_releases[0].epsilon == 0.5
    units = ledger.count_releases[0].units
    plan = b.plan(ledger, DATA, 32, 2)
    assert plan.sample_rate == 32 / units and plan.steps == 2 * round(units / 32)
    # Secure draws cannot be seeded, so the tolerances sit far out: with 40,000 draws the
    # mean's std is 0.014 and the variance ratio's about 0.011 (discrete Laplace, kurtosis 6).
    draws = np.array([SecureRandom().noisy_count(600, 0.5) for _ in range(40_000)])
    a = math.exp(-0.5)
    assert abs(draws.mean() - 600) < 0.1 and abs(draws.var() / (2 * a / (1 - a) ** 2) - 1) < 0.06
    other = b.open("e" * 64, 300)  # new data: another count, spending continues on the same budget
    assert len(other.count_releases) == 2 and other.events[-1].kind == "data-changed"
    assert other.spent() == pytest.approx(0.5 + 0.5)


def test_a_configuration_cannot_raise_the_budget(tmp_path: Path) -> None:
    ledger = spend_rounds(budget(tmp_path, target_epsilon=3.0), 1)
    spent = ledger.spent()
    with pytest.raises(PrivacyRefusal, match=r"budget of 6 but the ledger's is 3; .*ledger-raise --to 6"):
        budget(tmp_path, target_epsilon=6.0).open(DATA, 600)
    lowered = budget(tmp_path, target_epsilon=2.5).open(DATA, 600)  # lowering is recorded
    assert lowered.budget == 2.5 and lowered.events[-1].kind == "budget-lowered"
    with pytest.raises(MmflError, match="needs a reason"):
        budget(tmp_path).raise_budget(6.0, " ")
    raised = budget(tmp_path).raise_budget(6.0, "ethics board decision 2026-11")
    assert raised.budget == 6.0 and "ethics board" in raised.events[-1].detail
    assert budget(tmp_path, target_epsilon=6.0).open(DATA, 600).spent() == pytest.approx(spent)
    with pytest.raises(PrivacyRefusal, match="privacy.delta is 1e-06 .* but 1e-05 in its ledger"):
        budget(tmp_path, target_epsilon=6.0, delta=1e-6).open(DATA, 600)


def test_a_round_beyond_the_budget_is_refused_and_zero_epochs_spend_nothing(tmp_path: Path) -> None:
    b = budget(tmp_path, target_epsilon=2.0, planned_rounds=1)
    ledger = spend_rounds(b, 1)
    with pytest.raises(PrivacyRefusal, match=r"target epsilon 2.000, spent .* would reach"):
        b.plan(ledger, DATA, 32, 1)
    started = time.perf_counter()
    plan = b.plan(ledger, DATA, 32, 0)  # an encode-only round
    assert plan.steps == 0 and time.perf_counter() - started < 1.0
    assert b.commit(ledger, plan, "r", 9).seq == ledger.seq
    with pytest.raises(ValueError, match="at least one step"):
        plan_noise([], 0.0, 8.0, 0.1, 0, 1e-5, "rdp")


def test_a_broken_ledger_fails_closed_and_a_reset_keeps_what_was_spent(tmp_path: Path) -> None:
    b = budget(tmp_path)
    spent = spend_rounds(b, 3).spent()
    files = PrivacyLedger(tmp_path, "site-a")
    # Edited (fewer steps) with its checksum recomputed: the journal still knows better.
    raw = json.loads(files.path.read_text())
    raw["history"][0][2] = 1
    data = json.dumps(raw).encode()
    files.path.write_bytes(data)
    files.checksum_path.write_text(hashlib.sha256(data).hexdigest())
    with pytest.raises(LedgerError, match="disagrees with its journal"):
        files.load()
    with pytest.raises(MmflError, match="needs a reason"):
        b.reset(" ")
    fresh = b.reset("ledger edited by hand; ticket 41")
    assert fresh.spent() == pytest.approx(spent) and fresh.events[-1].kind == "reset"
    assert files.load() is not None and len(list(files.dir.glob("*.replaced-*"))) == 3
    # Deleted: training refuses; the reset recovers the spend from the journal.
    files.path.unlink()
    with pytest.raises(LedgerError, match="is missing"):
        files.load()
    assert b.reset("disk replaced; ticket 42").spent() == pytest.approx(spent)
    # Journal gone too: corrupt ledger bytes still parse, so nothing is lost.
    files.journal_path.unlink()
    with pytest.raises(LedgerError, match="disagrees with its journal"):
        files.load()
    assert b.reset("journal lost; ticket 43").spent() == pytest.approx(spent)
    # Everything gone: the operator must state the spend, which is carried over.
    files.set_aside()
    for path in (files.path, files.checksum_path, files.journal_path):
        path.unlink()
    (tmp_path / "model.json").write_text('{"dp": true}')  # the site's model says it trained with DP
    with pytest.raises(LedgerError, match="is missing"):
        b.load()
    with pytest.raises(MmflError, match="state what this site has spent with --spent"):
        b.reset("all lost; ticket 44")
    carried = b.reset("all lost; ticket 44", spent_floor=spent)
    assert carried.spent() == pytest.approx(spent) and carried.carried[0].epsilon == pytest.approx(spent)
    assert carried.total_delta() == pytest.approx(2e-5)  # basic composition with the carried spend


def rewrite_consistently(files: PrivacyLedger, steps: int) -> None:
    """What someone with write access but without the key can do: lower the steps in the
    ledger and in every journal line, re-chain the journal and recompute the checksum."""
    lines, prev = [], ""
    for raw in files.journal_path.read_bytes().splitlines():
        line = json.loads(raw)
        line["prev"] = prev
        for segment in line["state"]["history"]:
            segment[2] = min(segment[2], steps)
        encoded = json.dumps(line).encode()
        lines.append(encoded)
        prev = hashlib.sha256(encoded).hexdigest()
    files.journal_path.write_bytes(b"\n".join(lines) + b"\n")
    raw = json.loads(files.path.read_text())
    raw["history"][0][2] = steps
    data = json.dumps(raw).encode()
    files.path.write_bytes(data)
    files.checksum_path.write_text(hashlib.sha256(data).hexdigest())


def test_a_sealed_ledger_refuses_a_consistent_rewrite_without_the_key(tmp_path: Path) -> None:
    from mmfl.pki import create_site_keys

    # Without a key (simulated sites), a consistent rewrite goes through: why sites have one.
    plain = tmp_path / "plain"
    spent = spend_rounds(PrivacyBudget(plain, "site-a", PrivacyConfig(enabled=True, target_epsilon=8.0)), 3)
    rewrite_consistently(PrivacyLedger(plain, "site-a"), 1)
    assert PrivacyLedger(plain, "site-a").load().spent() < spent.spent() / 2

    key, _ = create_site_keys(tmp_path / "keys", "site-a")
    other, _ = create_site_keys(tmp_path / "keys", "other")
    state = tmp_path / "sealed"
    b = PrivacyBudget(state, "site-a", PrivacyConfig(enabled=True, target_epsilon=8.0), key)
    spent = spend_rounds(b, 3).spent()
    files = PrivacyLedger(state, "site-a", key)
    assert files.load().spent() == pytest.approx(spent) and files.seal_path.read_text().startswith("SHA256:")
    sealed = files.seal_path.read_bytes()
    rewrite_consistently(files, 1)
    with pytest.raises(LedgerError, match="changed without this site's key"):
        files.load()
    with pytest.raises(LedgerError, match="not by this site's key"):
        PrivacyLedger(state, "site-a", other).load()
    files.seal_path.unlink()
    with pytest.raises(LedgerError, match="carries no seal"):
        files.load()
    with pytest.raises(LedgerError):
        b.open(DATA, 600)  # training refuses
    # The seal is over the state: restoring it does not bless the rewrite.
    files.seal_path.write_bytes(sealed)
    with pytest.raises(LedgerError, match="changed without this site's key"):
        files.load()
    # The operator's reset signs again; the seal then holds.
    b.reset("ledger edited by hand; ticket 45")
    assert files.load() is not None and "ledger.seal.replaced-" in " ".join(
        p.name for p in files.dir.iterdir()
    )


def test_a_reset_never_goes_below_the_audit_log_nor_above_the_budget(tmp_path: Path) -> None:
    b = budget(tmp_path, target_epsilon=4.0)
    spent = spend_rounds(b, 2).spent()
    (tmp_path / "audit.jsonl").write_text(
        json.dumps(
            {"time": "t", "run_id": "r", "round": 2, "message_type": "train.represent", "status": "ok",
             "modalities": [], "shapes": {}, "bytes": 0, "sha256": "", "epsilon_after": spent + 1.0}
        )
        + "\n"
    )  # fmt: skip
    files = PrivacyLedger(tmp_path, "site-a")
    raw = json.loads(files.path.read_text())
    raw["budget"] = 100.0  # an edited ledger asking for a larger budget ...
    files.path.write_text(json.dumps(raw))
    shutil.rmtree(files.dir)  # ... then everything in privacy/ deleted: the audit log still knows
    with pytest.raises(LedgerError, match="is missing"):
        b.load()
    with pytest.raises(MmflError, match=f"its audit log shows at least {spent + 1.0:.4f}"):
        b.reset("privacy folder lost; ticket 45")
    reset = b.reset("privacy folder lost; ticket 45", spent_floor=0.5)  # a floor too low is raised
    assert reset.spent() == pytest.approx(spent + 1.0) and reset.budget == 4.0
    assert "reported in the site's audit log" in reset.carried[0].reason
    # An edited ledger cannot raise the budget through a reset either.
    raw = json.loads(files.path.read_text())
    raw["budget"], raw["history"] = 100.0, [[1.0, 0.5, 1000]]  # more spend, so it is the one kept
    files.path.write_text(json.dumps(raw))
    again = b.reset("ledger edited; ticket 46")
    assert again.budget == 4.0 and again.spent() > reset.spent()


def test_a_count_release_needs_room_in_the_budget(tmp_path: Path) -> None:
    b = budget(tmp_path, target_epsilon=0.12, count_epsilon=0.05)
    b.open(DATA, 600)
    b.open("e" * 64, 600)
    with pytest.raises(PrivacyRefusal, match="no room for the count of new data"):
        b.open("f" * 64, 600)
    assert PrivacyLedger(tmp_path, "site-a").load().spent() == pytest.approx(0.1)  # type: ignore[union-attr]


def test_the_ledger_names_its_guarantee(tmp_path: Path) -> None:
    ledger = spend_rounds(budget(tmp_path, accountant="prv", unit="group"), 1)
    data = json.loads((tmp_path / "privacy" / "ledger.json").read_text())
    assert data["adjacency"] == "add-remove" and data["unit"] == "group" and data["accountant"] == "prv"
    assert data["entries"][0]["epsilon_after"] > 0
    statement = ledger.statement()
    assert "group-level DP with add-or-remove-one adjacency" in statement and "epsilon-DP count" in statement


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
    out = torch.cat([p.grad.flatten() for p in params]) * len(x)  # pre_step divides by the batch size
    gsm._close()
    return out


def test_one_removed_private_sample_moves_the_clipped_sum_by_at_most_c() -> None:
    c, n = 0.05, 12
    g = torch.Generator().manual_seed(1)  # the same draw whatever ran before in this process
    globals_ = {
        "image": torch.nn.functional.normalize(torch.randn(40, 16, generator=g), dim=1),
        "text": torch.nn.functional.normalize(torch.randn(40, 16, generator=g), dim=1),
    }
    glabels = {
        "image": torch.randint(0, 3, (40,), generator=g),
        "text": torch.randint(0, 3, (40,), generator=g),
    }
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


_G = torch.Generator().manual_seed(2)
GLOBALS = {
    m: torch.nn.functional.normalize(torch.randn(20, 16, generator=_G), dim=1) for m in ("image", "text")
}
GLABELS = {m: torch.randint(0, 3, (20,), generator=_G) for m in ("image", "text")}


def losses_of(model: MultiEncoder, x: Tensors) -> torch.Tensor:
    return private_losses(model, x, GLOBALS, GLABELS, False, 0.1, torch.device("cpu"))


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_public_gradient_reaches_the_parameters_and_privacy_is_accounted(mode: str) -> None:
    config = PrivacyConfig(enabled=True, max_grad_norm=1.0, grad_sample_mode=mode)
    x = batch(10)
    public_x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))

    def run(with_public: bool) -> list[torch.Tensor]:
        model = paired_model()
        dp = PrivateTraining(model, config, 0.0, 0.0, 0.0, 0.1, 10, [], SecureRandom())
        assert dp.mode == mode
        public = (lambda: model("image", public_x).sum() * 3.0) if with_public else None
        dp.step(lambda: losses_of(model, x), public)
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


# ------------------------------------------------------------------------------ secure randomness


def noise_of_one_empty_step(mode: str, sigma: float = 2.0, c: float = 0.5, b: int = 4) -> torch.Tensor:
    """The update direction of a step on an empty Poisson batch: noise only, divided by B."""
    config = PrivacyConfig(enabled=True, max_grad_norm=c, grad_sample_mode=mode)
    model = paired_model()
    dp = PrivateTraining(model, config, 0.0, 0.0, sigma, 0.1, b, [], SecureRandom())
    dp.step(lambda: losses_of(model, batch(4).subset([])), None)
    assert dp.history == [(sigma, 0.1, 1)]  # an empty batch is a step like any other
    noise = torch.cat([p.grad.flatten() for p in model.parameters()])
    dp.close()
    return noise


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_empty_batches_are_noised_and_the_noise_comes_from_os_entropy_only(monkeypatch, mode: str) -> None:
    torch.manual_seed(0)
    first = noise_of_one_empty_step(mode)
    torch.manual_seed(0)  # the same torch seed, the same everything: other noise
    second = noise_of_one_empty_step(mode)
    assert not torch.equal(first, second)
    assert abs(float(first.std()) - 2.0 * 0.5 / 4) < 0.02  # N(0, (sigma C)^2) / B
    # With the OS's entropy pinned, the noise is exactly SecureRandom's: no other source enters.
    monkeypatch.setattr(secure_random.os, "urandom", lambda n: bytes(range(n)))
    pinned = [noise_of_one_empty_step(mode) for _ in range(2)]
    assert torch.equal(pinned[0], pinned[1])
    reference = SecureRandom()
    assert torch.equal(pinned[0], reference.normal((len(pinned[0]),), 2.0 * 0.5) / 4)


def test_poisson_sampling_rate_and_groups() -> None:
    rng = SecureRandom()
    sampler = PoissonSampler.build(None, 1000, 0.05, rng)
    counts = np.zeros(1000)
    for _ in range(400):
        counts[sampler.draw()] += 1
    assert abs(counts.mean() / 400 - 0.05) < 0.003  # each unit in ~q of the batches
    sizes = [len(sampler.draw()) for _ in range(300)]
    assert np.var(sizes) > 20  # batch sizes vary (Poisson), they are not fixed
    groups = ["p1", "p1", "p1", "p2", "p3", "p3"]
    units = training_units(groups, 6)
    assert [list(u) for u in units] == [[0, 1, 2], [3], [4, 5]]
    grouped = PoissonSampler.build(groups, 6, 0.9, rng)
    for _ in range(200):
        rows = grouped.draw()
        assert len({groups[i] for i in rows}) == len(rows)
    with pytest.raises(ValueError, match="group id on every private row"):
        training_units(["a", None], 2)


def test_the_holdout_side_of_a_row_depends_on_that_row_only() -> None:
    keys = [f"row:{i}" for i in range(2000)]
    train, hold = holdout_split(keys, 7, 0.2)
    assert abs(len(hold) / 2000 - 0.2) < 0.03
    held = {keys[i] for i in hold}
    for neighbour in (keys[:500] + keys[501:], ["row:new", *keys]):  # one row removed / added
        _, hold2 = holdout_split(neighbour, 7, 0.2)
        assert {neighbour[i] for i in hold2} - {"row:new"} == held - {"row:500"}
    grouped = ["group:a", "group:a", "group:b", *keys[:50]]
    _, hold3 = holdout_split(grouped, 3, 0.5)
    assert (0 in hold3) == (1 in hold3)  # a group's rows stay together


def test_noise_planning_keeps_the_planned_rounds_within_the_budget() -> None:
    q, steps = 0.05, 40
    sigma = plan_noise([], 0.05, 8.0, q, 10 * steps, 1e-5, "rdp")
    assert 7.94 <= 0.05 + epsilon_of([[sigma, q, 10 * steps]], 1e-5, "rdp") <= 8.0
    # With spend already on the ledger, the same rounds need more noise.
    spent = add_segment([], 1.0, q, 200)
    assert plan_noise(spent, 0.05, 8.0, q, 10 * steps, 1e-5, "rdp") > sigma
    with pytest.raises(PrivacyRefusal, match="too little"):
        plan_noise([], 8.0, 8.0, q, steps, 1e-5, "rdp")


def test_secure_random_is_uniform_and_fresh() -> None:
    a, b = SecureRandom(), SecureRandom()
    u = a.uniform(100_000)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.005
    assert not np.array_equal(a.uniform(10), b.uniform(10))
    z = a.normal((200_000,), 3.0)
    assert abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 3.0) < 0.03


def test_concurrent_rounds_of_one_site_are_all_accounted(tmp_path: Path) -> None:
    def rounds(k: int) -> None:
        b = budget(tmp_path, noise_multiplier=2.0)  # a process of its own would hold its own object
        for r in range(3):
            with b.exclusive():
                ledger = b.open(DATA, 600)
                time.sleep(0.01)  # training happens here, with the ledger held
                b.commit(ledger, b.plan(ledger, DATA, 32, 1), f"run-{k}", r + 1)

    threads = [threading.Thread(target=rounds, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger = PrivacyLedger(tmp_path, "site-a").load()  # journal and ledger agree
    assert ledger is not None and len(ledger.entries) == 12 and len(ledger.count_releases) == 1
    steps = 12 * round(ledger.count_releases[0].units / 32)
    assert ledger.history == [[2.0, 32 / ledger.count_releases[0].units, steps]]
