"""Paper presets (`fedjax_sim.presets`): valid fields, sourced values, round trips, errors.

Fast: no training. Only `runner.prepare` builds data and a model host-side (digits, seconds).
"""
from __future__ import annotations

import pytest

import fedjax_sim.algorithms  # noqa: F401  (registers the algorithm config sections)
from fedjax_sim import config as config_lib
from fedjax_sim import presets
from fedjax_sim.errors import ConfigError

NAMES = sorted(presets.PRESETS)


def _applied(name: str) -> config_lib.Config:
    return presets.apply_preset(config_lib.Config(), name)


def _get(cfg, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def test_registry_has_fedrema_and_names_match():
    assert "fedrema" in presets.PRESETS
    for name, preset in presets.PRESETS.items():
        assert preset.name == name


@pytest.mark.parametrize("name", NAMES)
def test_fields_are_config_fields_and_every_value_has_provenance(name):
    preset = presets.PRESETS[name]
    fields = set(config_lib.field_names())
    assert set(preset.values) <= fields, set(preset.values) - fields
    assert set(preset.provenance) == set(preset.values)
    assert all(p.strip() for p in preset.provenance.values())
    assert preset.source.strip() and "\n" not in preset.description
    assert isinstance(preset.notes, tuple) and all(isinstance(n, str) for n in preset.notes)
    # A preset is a comparison setting, not a method: it leaves the algorithm to the user.
    assert "algorithm" not in preset.values


@pytest.mark.parametrize("name", NAMES)
def test_applied_preset_sets_its_values_and_validates(name):
    cfg = _applied(name)
    config_lib.validate(cfg)
    for key, value in presets.PRESETS[name].values.items():
        assert _get(cfg, key) == value, key


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_through_dict(name):
    cfg = _applied(name)
    back = config_lib.from_dict(config_lib.to_dict(cfg))
    for key, value in presets.PRESETS[name].values.items():
        assert _get(back, key) == value, key
    assert config_lib.to_dict(back) == config_lib.to_dict(cfg)


def test_preset_name_recorded_only_when_config_has_the_field():
    cfg = _applied("fedrema")
    if "preset" in config_lib.Config.__dataclass_fields__:
        assert cfg.preset == "fedrema"
        assert config_lib.to_dict(cfg)["preset"] == "fedrema"
    else:
        assert "preset" not in config_lib.to_dict(cfg)


def test_apply_mutates_and_returns_the_same_config():
    cfg = config_lib.Config()
    assert presets.apply_preset(cfg, "fedrema") is cfg


def test_unknown_preset_raises_config_error_naming_the_flag():
    cfg = config_lib.Config()
    before = config_lib.to_dict(cfg)
    with pytest.raises(ConfigError) as err:
        presets.apply_preset(cfg, "no_such_paper")
    assert err.value.field == "--preset"
    assert err.value.value == "no_such_paper"
    assert "fedrema" in err.value.allowed
    assert config_lib.to_dict(cfg) == before  # nothing applied


def test_fedrema_matches_spec_table():
    """specs/fedrema.md §5.1 (local training) and §5.2 (by_s partition), official code [C]."""
    v = presets.PRESETS["fedrema"].values
    assert v["local.optimizer"] == "momentum"
    assert v["local.lr"] == 0.01
    assert v["local.momentum"] == 0.9
    assert v["local.weight_decay"] == 0.0
    assert v["local.clip_norm"] == 10.0
    assert v["local.epochs"] == 5
    assert v["local.batch_size"] == 100
    assert v["fedrema.delta"] == 0.5
    assert v["data.num_clients"] == 20
    assert v["cohort"] == 0  # join ratio 1.0
    assert v["rounds"] == 500
    assert v["data.partition"] == "dominant_class"
    # 500 samples per client at 80/20: 400 training rows, 20% test
    assert v["data.samples_per_client"] == 400
    assert v["data.test_fraction"] == 0.2
    assert v["data.dominant_fraction"] == 0.2
    assert v["data.dominant_classes"] == 3
    assert all(p.startswith(("[C]", "[I]")) for p in presets.PRESETS["fedrema"].provenance.values())


def test_later_layers_override_the_preset():
    """defaults < preset < --set: a --set after the preset wins."""
    cfg = config_lib.apply_overrides(_applied("fedrema"), ["local.lr=0.05", "rounds=3"])
    assert cfg.local.lr == 0.05 and cfg.rounds == 3
    assert cfg.local.batch_size == 100  # the rest of the preset stays


def test_prepare_fedrema_preset():
    from fedjax_sim import runner

    cfg = _applied("fedrema")
    cfg.algorithm, cfg.rounds = "fedrema", 2
    prep = runner.prepare(cfg)
    assert prep.data.num_clients == 20
    assert [int(n) for n in prep.data.n_train] == [400] * 20
    # 400 rows at batch 100, 5 epochs: 20 full steps, so the code's drop_last changes nothing
    assert (prep.schedule.batch_size, prep.schedule.num_steps) == (100, 20)


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("fedprox_synthetic")])
def test_prepare_fedprox_synthetic_presets(name):
    from fedjax_sim import runner

    cfg = _applied(name)
    cfg.algorithm, cfg.rounds = "fedprox", 2
    prep = runner.prepare(cfg)
    assert prep.data.num_clients == 30


def test_describe_presets_one_line_each():
    lines = presets.describe_presets()
    assert len(lines) == len(presets.PRESETS)
    for line, (name, preset) in zip(lines, presets.PRESETS.items()):
        assert line.startswith(name) and line.endswith(preset.description)
        assert "\n" not in line


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        presets.PRESETS["fedrema"].values["local.lr"] = 1.0


def test_preset_name_recorded_on_a_config_with_the_field():
    """Covers the recording branch whether or not `Config` has grown its ``preset`` field yet."""
    import dataclasses

    @dataclasses.dataclass
    class WithPreset(config_lib.Config):
        preset: str = ""

    cfg = presets.apply_preset(WithPreset(), "fedrema")
    assert cfg.preset == "fedrema" and cfg.local.lr == 0.01
