"""Configs: unknown keys and bad values are refused naming the key; TOML and overrides work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmfl.config import AdaptConfig, FederationSpec, PrivacyConfig, dump_toml, load_config
from mmfl.errors import ConfigError


def test_defaults_are_the_six_site_digits_federation() -> None:
    spec = load_config(FederationSpec)
    assert spec.dataset == "digits" and len(spec.sites) == 6
    kinds = {tuple(s.modalities) for s in spec.sites}
    assert kinds == {("image",), ("text",), ("image", "text")}
    for modality in ("image", "text"):
        archs = {s.architectures[modality] for s in spec.sites if modality in s.modalities}
        assert len(archs) >= 2


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "spec.toml"
    path.write_text("rounds = 3\n[server]\nlrr = 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(FederationSpec, path)
    assert str(info.value) == f"invalid config {path}: server.lrr: unknown key"


def test_bad_value_is_named(tmp_path: Path) -> None:
    path = tmp_path / "spec.toml"
    path.write_text(
        '[[sites]]\nid = "a"\nmodalities = ["image"]\narchitectures = {image = "mlp"}\n'
        "[sites.privacy]\ndelta = 2.0\n"
    )
    with pytest.raises(ConfigError, match=r"sites\.0\.privacy\.delta: Input should be less than 1"):
        load_config(FederationSpec, path)


def test_cross_field_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="no architecture for modality 'text'"):
        load_config(
            FederationSpec,
            base={"sites": [{"id": "a", "modalities": ["image", "text"], "architectures": {"image": "mlp"}}]},
        )
    with pytest.raises(ConfigError, match="outside the federation"):
        load_config(
            FederationSpec,
            base={"sites": [{"id": "a", "modalities": ["audio"], "architectures": {"audio": "mfcc-mlp"}}]},
        )


def test_overrides_reach_nested_and_listed_keys() -> None:
    spec = load_config(
        FederationSpec,
        overrides=["rounds=7", "sites.2.train.lr=0.05", "cream.kd_weight=0.6", "strategy=mean"],
    )
    assert spec.rounds == 7 and spec.strategy == "mean" and spec.cream.kd_weight == 0.6
    assert spec.sites[2].train is not None and spec.sites[2].train.lr == 0.05
    with pytest.raises(ConfigError, match="rounds: Input should be greater than or equal to 1"):
        load_config(FederationSpec, overrides=["rounds=0"])
    with pytest.raises(ConfigError, match="sites.9 is not an index below 6"):
        load_config(FederationSpec, overrides=["sites.9.id=x"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(FederationSpec, overrides=["rounds"])
    with pytest.raises(ConfigError, match="strategy: Input should be"):
        load_config(FederationSpec, overrides=["strategy=bogus"])


def test_toml_round_trip(tmp_path: Path) -> None:
    spec = load_config(FederationSpec, overrides=["sites.0.privacy.enabled=true", "seed=11"])
    path = tmp_path / "spec.toml"
    path.write_text(dump_toml(spec))
    assert load_config(FederationSpec, path) == spec


def test_every_config_forbids_unknown_keys(tmp_path: Path) -> None:
    for model in (PrivacyConfig, AdaptConfig):
        with pytest.raises(ConfigError, match="typo: unknown key"):
            load_config(model, base={"typo": 1})
    with pytest.raises(ConfigError, match="is not valid TOML"):
        bad = tmp_path / "bad.toml"
        bad.write_text("rounds = = 3")
        load_config(FederationSpec, bad)


def test_cream_plus_fills_only_what_the_spec_leaves_unset(tmp_path: Path) -> None:
    from mmfl.strategies.methods import CREAM_PLUS_DEFAULTS, method_of

    def effective_cream(spec: FederationSpec):  # noqa: ANN202
        return method_of(spec.strategy).cream(spec.cream)

    spec = load_config(FederationSpec, overrides=['strategy="cream+"'])
    cream = effective_cream(spec)
    assert {k: getattr(cream, k) for k in CREAM_PLUS_DEFAULTS} == CREAM_PLUS_DEFAULTS
    path = tmp_path / "s.toml"
    path.write_text('strategy = "cream+"\n[cream]\nkd_weight = 0.25\n')
    chosen = effective_cream(load_config(FederationSpec, path, ["cream.ensemble_temperature=0.2"]))
    assert (
        chosen.kd_weight == 0.25
        and chosen.ensemble_temperature == 0.2
        and chosen.distill_loss == "contrastive"
    )
    plain = load_config(FederationSpec, overrides=['strategy="cream"'])
    assert effective_cream(plain).ensemble_temperature == 1.0  # plain cream untouched


@pytest.mark.parametrize("name", ["a b", "<script>alert(1)</script>", "-x", ""])
def test_a_bad_spec_name_is_one_line_naming_the_key(name: str) -> None:
    """Issue 35, defect 12: a name the run's folder and id cannot carry was a 52-line traceback."""
    from helpers import mmfl_cli

    done = mmfl_cli("simulate", "--engine", "inprocess", "--set", f"name={json.dumps(name)}")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("mmfl: error:") and "name: String should match pattern" in line


def test_a_plan_read_back_in_another_process_keeps_the_methods_own_settings(digits, tmp_path: Path) -> None:
    """Every engine but the in-process one (and the daemon) reads ``plan.json`` back: a method's
    own settings (cream+'s temperature, contrastive distillation; fedavgm's momentum) fill only
    fields the spec left unset, so the file must not turn the defaults into set values."""
    from mmfl.config import RunPlan
    from mmfl.simulation.plan import build_plan
    from mmfl.strategies.methods import method_of

    for strategy in ("cream+", "fedavgm"):
        spec = load_config(FederationSpec, overrides=[f'strategy="{strategy}"', "rounds=1"])
        plan = build_plan(spec, tmp_path / strategy.replace("+", "plus"))
        read = RunPlan.model_validate_json(
            (tmp_path / strategy.replace("+", "plus") / "plan.json").read_text()
        )
        method = method_of(strategy)
        assert method.cream(read.spec.cream) == method.cream(plan.spec.cream)
        assert method.fedavg(read.spec.fedavg) == method.fedavg(plan.spec.fedavg)
        assert read.spec == plan.spec and read.run_id == plan.run_id
    creamplus = RunPlan.model_validate_json((tmp_path / "creamplus" / "plan.json").read_text())
    assert method_of("cream+").cream(creamplus.spec.cream).ensemble_temperature == 0.05
    fedavgm = RunPlan.model_validate_json((tmp_path / "fedavgm" / "plan.json").read_text())
    assert method_of("fedavgm").fedavg(fedavgm.spec.fedavg).server_momentum == 0.5


def test_an_initialised_spec_keeps_the_methods_own_settings(tmp_path: Path) -> None:
    """``mmfl simulate init > spec.toml`` then ``-c spec.toml``: the cream and fedavg keys the
    method fills are listed as comments, not written as values that would override it."""
    import subprocess
    import sys

    from mmfl.strategies.methods import method_of

    done = subprocess.run(
        [sys.executable, "-m", "mmfl.cli", "simulate", "init", "--set", 'strategy="cream+"'],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "# cream.ensemble_temperature = 1.0   unset: the method's own setting applies" in done.stdout
    (tmp_path / "spec.toml").write_text(done.stdout)
    spec = load_config(FederationSpec, tmp_path / "spec.toml")
    cream = method_of(spec.strategy).cream(spec.cream)
    assert (cream.ensemble_temperature, cream.distill_loss, cream.kd_weight) == (0.05, "contrastive", 1.0)
    # a key the user sets is written, and wins over the method's
    done = subprocess.run(
        [sys.executable, "-m", "mmfl.cli", "simulate", "init", "--set", "cream.kd_weight=0.5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    (tmp_path / "set.toml").write_text(done.stdout)
    spec = load_config(FederationSpec, tmp_path / "set.toml", ['strategy="cream+"'])
    assert method_of("cream+").cream(spec.cream).kd_weight == 0.5
