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
