"""Named training presets: applied by ``gainx train --preset``, overridden by explicit flags, shared with the
experiments and with the defaults of TrainConfig and GAIN."""

from __future__ import annotations

import inspect
from dataclasses import fields, replace

import pytest

from gainx.cli import build_parser
from gainx.experiments.runner import train_config
from gainx.experiments.specs import FULL, RunSpec, recipe
from gainx.losses import GAIN
from gainx.training.config import TrainConfig
from gainx.training.preset_args import preset_values
from gainx.training.presets import DEFAULT_PRESET, EXPERIMENT_TRAINING, PRESETS, preset, with_preset


def _train_config(*argv: str) -> TrainConfig:
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", *argv])
    return TrainConfig(**preset_values(args, [f.name for f in fields(TrainConfig)]))


def _subset(config: TrainConfig, keys) -> dict:
    return {k: getattr(config, k) for k in keys}


def test_presets_name_only_train_config_fields():
    known = {f.name for f in fields(TrainConfig)}
    for name, values in PRESETS.items():
        assert set(values) <= known, name


def test_train_preset_applies_the_preset():
    for name, values in PRESETS.items():
        assert _subset(_train_config("--preset", name), values) == dict(values)
    config = _train_config("--preset", "counterfactual")
    assert (config.method, config.guidance, config.counterfactual_jitter) == ("gainext", "counterfactual", "colour")
    assert (config.alpha, config.omega_e, config.lr, config.batch_size, config.augment) == (0.0, 0.0, 3e-3, 64, False)


@pytest.mark.parametrize("before", [True, False])
def test_explicit_flags_win_over_the_preset_wherever_they_stand(before):
    flags = ["--lr", "0.01", "--augment", "--omega-e", "1", "--counterfactual-jitter", "none"]
    argv = [*flags, "--preset", "counterfactual"] if before else ["--preset", "counterfactual", *flags]
    config = _train_config(*argv)
    assert (config.lr, config.augment, config.omega_e, config.counterfactual_jitter) == (0.01, True, 1.0, "none")
    # the flags not given still come from the preset, even where the preset's value differs from the default
    assert (config.batch_size, config.alpha, config.method, config.am_warmup) == (64, 0.0, "gainext", 1)


def test_an_explicit_flag_equal_to_the_default_still_wins():
    # 32 and flips are TrainConfig's defaults: typed explicitly they must not be replaced by the preset's 64 / no flips
    config = _train_config("--preset", "counterfactual", "--batch-size", "32", "--augment")
    assert (config.batch_size, config.augment) == (32, True)


def test_no_preset_keeps_the_defaults():
    assert _train_config() == TrainConfig(data="d", out="o")


def test_the_default_preset_is_the_default_of_train_config_and_gain():
    """``gainx train`` without --preset applies DEFAULT_PRESET: TrainConfig and GAIN must default to the same."""
    assert DEFAULT_PRESET == "default"
    default = PRESETS[DEFAULT_PRESET]
    assert _subset(TrainConfig(data="d", out="o"), default) == dict(default)
    gain_defaults = {
        name: p.default
        for name, p in inspect.signature(GAIN.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    shared = set(gain_defaults) & set(default)
    assert shared >= {"alpha", "omega_e", "sigma", "omega", "guidance", "second_order"}
    assert {k: gain_defaults[k] for k in shared} == {k: default[k] for k in shared}
    # and every GAIN argument that TrainConfig also has defaults to the same value
    config = TrainConfig(data="d", out="o")
    common = set(gain_defaults) & {f.name for f in fields(TrainConfig)}
    assert {k: gain_defaults[k] for k in common} == {k: getattr(config, k) for k in common}


def test_experiment_recipe_and_train_preset_agree():
    """One source: the experiment's recipe run trains with the values `gainx train --preset` gives."""
    spec = recipe("counterfactual", 0, "masks", 0.05)
    assert (spec.method, spec.guidance, spec.key) == ("gainext", "counterfactual", "recipe-counterfactual-masks-0.05")
    profile = FULL.with_overrides(epochs=12)
    experiment = train_config(spec, "data", "run", profile)
    train = _train_config("--preset", "counterfactual")
    assert _subset(experiment, PRESETS["counterfactual"]) == _subset(train, PRESETS["counterfactual"])


def test_experiment_runs_without_a_preset_use_the_experiment_training():
    config = train_config(RunSpec("gain", 0), "data", "run", FULL)
    assert _subset(config, EXPERIMENT_TRAINING) == dict(EXPERIMENT_TRAINING)
    # the objective stays the paper's (the defaults)
    assert (config.alpha, config.omega_e, config.guidance) == (1.0, 10.0, "paper")


def test_profile_overrides_win_over_the_recipe():
    config = train_config(recipe("counterfactual", 0, "masks", 0.05), "data", "run", FULL.with_overrides(omega_e=1.0))
    assert (config.omega_e, config.alpha, config.counterfactual_jitter) == (1.0, 0.0, "colour")


def test_with_preset_and_unknown_names():
    values = {"lr": 1.0, "alpha": 5.0, "batch_size": 2, "augment": True, "method": "gain"}
    values.update({k: None for k in PRESETS["counterfactual"] if k not in values})
    out = with_preset(values, "counterfactual", given={"lr"})
    assert out["lr"] == 1.0 and out["alpha"] == 0.0 and out["method"] == "gainext"
    assert with_preset(values, None, given=()) == values
    with pytest.raises(ValueError, match="unknown preset 'fast'; choose from default, paper, counterfactual"):
        preset("fast")
    with pytest.raises(ValueError, match="not among the values"):
        with_preset({"lr": 1.0}, "counterfactual")
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe("fast", 0, "masks", 0.05)
    with pytest.raises(TypeError):  # the presets are read-only: nobody changes the recipe in place
        PRESETS["paper"]["alpha"] = 2.0


def test_train_rejects_an_unknown_preset(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "d", "--out", "o", "--preset", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err


def test_counterfactual_recipe_is_what_the_flags_spelled_out():
    """The recipe trains as ``--guidances counterfactual --alpha 0 --omega-e 0 --counterfactual-jitter colour``
    did (the spelling of the tables' rows before the preset), with the default's counterfactual images: scaled
    to the batch (half of it) where those rows fixed 32, their weight moved by the group DRO where those rows
    fixed it at 4."""
    profile = FULL.with_overrides(epochs=20)
    spelled = FULL.with_overrides(epochs=20, alpha=0.0, omega_e=0.0, counterfactual_jitter="colour")
    by_flags = train_config(RunSpec("gainext", 0, "masks", 0.05, "counterfactual"), "d", "o", spelled)
    assert by_flags.counterfactuals == 32 and by_flags.batch_size == 64
    assert train_config(recipe("counterfactual", 0, "masks", 0.05), "d", "o", profile) == replace(
        by_flags, counterfactuals=None, counterfactual_weight=1.0, counterfactual_eta=0.1, counterfactual_weight_max=4.0
    )


def test_gainext_without_flags_trains_the_default_recipe():
    """``gainx train --method gainext`` alone: counterfactual images with permuted colours, the attention terms at
    the default recipe's weights, the experiments' optimisation (the settings the tables measured)."""
    config = _train_config("--method", "gainext")
    assert _subset(config, PRESETS["default"]) == dict(PRESETS["default"])
    assert (config.guidance, config.counterfactual_jitter) == ("counterfactual", "colour")
    assert (config.lr, config.batch_size, config.am_warmup, config.augment) == (3e-3, 64, 1, False)


def test_paper_preset_is_the_literal_objective():
    """``--preset paper`` keeps eq. 7-8 at the paper's weights selectable by name."""
    config = _train_config("--method", "gainext", "--preset", "paper")
    assert (config.guidance, config.alpha, config.omega_e, config.sigma, config.omega) == (
        "paper",
        1.0,
        10.0,
        0.5,
        10.0,
    )
    assert config.counterfactual_jitter == "colour"  # outside the preset: the default, unused by guidance paper


def test_experiment_training_pins_the_objective_of_the_tables():
    """Experiment runs keep the objective their tables were measured with, whatever the library's defaults."""
    config = train_config(RunSpec("gainext", 0, "masks", 0.05, "counterfactual"), "data", "run", FULL)
    assert (config.alpha, config.omega_e, config.counterfactual_jitter) == (1.0, 10.0, "none")


def test_alpha_none_stands_for_the_methods_weight():
    """alpha=None (the default): eq. 6's 1 for GAIN, 0 for GAINext (the default recipe), 0 for the baseline."""
    from gainx.losses.gain import ALPHA_BY_METHOD
    from gainx.models import SmallCNN

    model = SmallCNN(3, width=4)
    assert {m: GAIN(model, "features", method=m).alpha for m in ("baseline", "gain", "gainext")} == dict(
        ALPHA_BY_METHOD
    )
    assert ALPHA_BY_METHOD["gain"] == 1.0 and ALPHA_BY_METHOD["gainext"] == 0.0
    assert GAIN(model, "features", method="gainext", alpha=0.5).alpha == 0.5
    assert _train_config().alpha is None and _train_config("--alpha", "0.5").alpha == 0.5
