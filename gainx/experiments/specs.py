"""What the experiments run: benchmarks, size profiles and the run matrix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from gainx.data.synthetic import DECOY_COLORS, SHAPES, write_cooccur, write_decoy, write_photos, write_shapes
from gainx.losses.guidance import GUIDANCES
from gainx.training.presets import PRESETS


@dataclass(frozen=True)
class Benchmark:
    """A data set, generated (``write``) or the user's own (``root``), and the roles of its splits."""

    name: str
    write: Callable[..., Path] | None  # write(out, image_size=, seed=, mask_fraction=, train_size=, test_size=)
    splits: tuple[str, ...]  # evaluated test splits
    main_split: str  # the split whose accuracy is the headline (bias-conflicting, or the test set)
    description: str
    unbiased: dict[str, Any] | None = None  # generator arguments without the bias (for the oracle run)
    root: Path | None = None  # a data set on disk (every seed trains on it) instead of a generated one
    train_split: str = "train"
    oracle_split: str | None = None  # with ``root``: a training split drawn without the bias (the oracle's)
    image_size: int | None = None  # with ``root``: the network's input size (None: the data set's default)
    guide: str | None = None  # with ``root`` (VOC, COCO): "boxes" to train on its boxes (None: load_dataset's masks)

    @property
    def has_oracle(self) -> bool:
        """Whether the oracle (the baseline trained without the bias) can run."""
        return self.unbiased is not None or self.oracle_split is not None


BENCHMARKS: dict[str, Benchmark] = {
    "decoy": Benchmark(
        "decoy",
        write_decoy,
        ("test_consistent", "test_random"),
        "test_random",
        "decoy digits: a corner colour swatch encodes the label in train, random in test_random",
        unbiased={"bias": 1.0 / len(DECOY_COLORS)},
    ),
    "cooccur": Benchmark(
        "cooccur",
        write_cooccur,
        ("test_consistent", "test_conflicting"),
        "test_conflicting",
        "shapes on a class-specific textured band (boats on water); another class's band in test_conflicting",
        unbiased={"bias": 1.0 / len(SHAPES)},
    ),
    "photos": Benchmark(
        "photos",
        write_photos,
        ("test_consistent", "test_conflicting"),
        "test_conflicting",
        "shapes on crops of real photographs, one photo per class; another class's photo in test_conflicting",
        unbiased={"bias": 1.0 / len(SHAPES)},
    ),
    "shapes": Benchmark(
        "shapes",
        write_shapes,
        ("test",),
        "test",
        "one or two shapes of varied size on clutter; masks for evaluation only",
    ),
}
BIAS_BENCHMARKS = ("decoy", "cooccur", "photos")  # the benchmarks with a bias-conflicting split


@dataclass(frozen=True)
class Profile:
    """Data sizes and epochs of one experiment scale, and training settings that override every run's.

    A training setting left at None takes the run's value: its preset's (:mod:`gainx.training.presets`),
    else :data:`gainx.training.presets.EXPERIMENT_TRAINING`, else the ``TrainConfig`` default.
    """

    image_size: int
    train_size: int
    test_size: int
    epochs: int
    arch: str = "small_cnn"  # the network every run trains (gainx.models.build_model)
    weights: str | None = None  # its starting weights: a local state dict, or "pretrained" (fine-tuning)
    target_layer: str | None = None  # the layer of the attention (None: the arch's default)
    batch_size: int | None = None
    lr: float | None = None
    am_warmup: int | None = None  # epochs of L_cl only (at most epochs - 1)
    alpha: float | None = None  # weight of L_am (eq. 6)
    sigma: float | None = None  # threshold of the soft mask T (eq. 4)
    am_gradient: str | None = None  # network | attention: what L_am trains (gainx.losses.gain.GAIN)
    am_fill: str | None = None  # zero | context: what the erased region of I* holds (gainx.losses.gain.GAIN)
    omega_e: float | None = None  # weight of the guidance loss (eq. 8)
    counterfactuals: int | None = None  # pasted images per batch (guidance "counterfactual")
    counterfactual_weight: float | None = None  # their weight in L_cl relative to a batch image
    counterfactual_eta: float | None = None  # group-DRO step size of that weight (0: fixed)
    counterfactual_weight_max: float | None = None  # the most the group DRO raises it to
    counterfactual_jitter: str | None = None  # none | colour | geometry | all (gainx.losses.counterfactual.JITTERS)
    counterfactual_backgrounds: int | None = None  # object-free backgrounds per batch, labelled with no class
    second_order: bool | None = None  # train through the Grad-CAM weights too

    def with_overrides(self, **values: Any) -> Profile:
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    @property
    def model(self) -> str:
        """The network in words: ``small_cnn from scratch``, ``efficientnet_lite0 fine-tuned from pretrained``
        (``, attention at <layer>`` when the layer is not the arch's default)."""
        start = f"fine-tuned from {self.weights}" if self.weights else "from scratch"
        return f"{self.arch} {start}" + (f", attention at {self.target_layer}" if self.target_layer else "")

    def training_overrides(self) -> dict[str, Any]:
        """The training settings set in this profile (TrainConfig field -> value)."""
        return {f: getattr(self, f) for f in TRAINING_FIELDS if getattr(self, f) is not None}


TRAINING_FIELDS = (
    "batch_size",
    "lr",
    "am_warmup",
    "alpha",
    "sigma",
    "am_gradient",
    "am_fill",
    "omega_e",
    "counterfactuals",
    "counterfactual_weight",
    "counterfactual_eta",
    "counterfactual_weight_max",
    "counterfactual_jitter",
    "counterfactual_backgrounds",
    "second_order",
)


# Full size: the whole set (decoy 13 + cooccur 14 configurations + localization 3, x 3 seeds = 90 runs)
# took 21 minutes of wall time on a shared 2-core CPU (two processes, one thread each; docs/experiments.md).
FULL = Profile(image_size=32, train_size=800, test_size=250, epochs=4)
QUICK = Profile(image_size=24, train_size=100, test_size=24, epochs=2)


@dataclass(frozen=True)
class RunSpec:
    """One training run: method, its supervision and guidance loss, and the seed."""

    method: str  # baseline | gain | gainext
    seed: int
    annotation: str = "none"  # none | masks | boxes | data (the data set's own masks or boxes)
    budget: float = 0.0  # fraction of training images that carry the annotation
    guidance: str = "paper"
    unbiased: bool = False  # train on the benchmark without its bias (an upper reference)
    preset: str | None = None  # a recipe of gainx.training.presets: its settings, method and guidance

    @property
    def key(self) -> str:
        """Name of the configuration (the same for every seed)."""
        if self.unbiased:
            return f"{self.method}-unbiased-data"
        if self.method != "gainext" and self.preset is None:
            return self.method
        head = f"recipe-{self.preset}" if self.preset else "gainext"
        where = "" if self.annotation == DATA else f"-{self.annotation}-{self.budget:g}"
        tail = "" if self.preset or self.guidance == "paper" else f"-{self.guidance}"
        return head + where + tail

    @property
    def name(self) -> str:
        return f"{self.key}-seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "key": self.key}


REFERENCES = ("baseline", "gain", "oracle")  # the runs without annotation
RECIPES = ("default",)  # the presets run by default as a recipe of their own (gainx experiment bias --data)
DATA = "data"  # annotation: the data set's own masks or boxes, as they are


def recipe(name: str, seed: int, annotation: str, budget: float) -> RunSpec:
    """The run of the preset ``name`` (:data:`gainx.training.presets.PRESETS`): its method (GAINext unless
    it names one) and guidance, trained with its settings."""
    if name not in PRESETS:
        raise ValueError(f"unknown recipe {name!r}; choose from the presets {', '.join(PRESETS)}")
    settings = PRESETS[name]
    method, guidance = settings.get("method", "gainext"), settings.get("guidance", "paper")
    return RunSpec(method, seed, annotation, budget, guidance, preset=name)


def bias_matrix(
    seeds: list[int],
    budgets: list[float],
    guidance_budget: float,
    guidances: list[str],
    oracle: bool = False,
    references: tuple[str, ...] = REFERENCES,
    recipes: tuple[str, ...] = (),
) -> list[RunSpec]:
    """The ``references`` without annotation (baseline, GAIN and, with ``oracle``, the baseline trained on
    the benchmark without its bias), GAINext with the paper's L_e (masks and boxes at every budget), the
    other guidance losses and the ``recipes`` (presets; masks at ``guidance_budget``)."""
    _check_budgets(budgets + [guidance_budget])
    _check_guidances(guidances)
    _check_references(references, REFERENCES)

    def annotated(seed: int) -> list[RunSpec]:
        runs = [RunSpec("gainext", seed, kind, b) for kind in ("masks", "boxes") for b in budgets]
        runs += [RunSpec("gainext", seed, "masks", guidance_budget, g) for g in guidances if g != "paper"]
        return runs + [recipe(name, seed, "masks", guidance_budget) for name in recipes]

    return _per_seed(seeds, references, annotated, oracle)


def data_matrix(
    seeds: list[int],
    annotated: float,
    guidances: list[str],
    oracle: bool,
    references: tuple[str, ...] = REFERENCES,
    recipes: tuple[str, ...] = RECIPES,
) -> list[RunSpec]:
    """On a data set as it is (its own masks or boxes on the fraction ``annotated`` of the training images):
    the ``references``, GAINext with each of ``guidances`` and the ``recipes``."""
    _check_guidances(guidances)
    _check_references(references, REFERENCES)

    def guided(seed: int) -> list[RunSpec]:
        runs = [RunSpec("gainext", seed, DATA, annotated, g) for g in guidances]
        return runs + [recipe(name, seed, DATA, annotated) for name in recipes]

    return _per_seed(seeds, references, guided, oracle)


def localization_matrix(
    seeds: list[int],
    budgets: list[float],
    guidances: list[str] = ("paper",),
    references: tuple[str, ...] = ("baseline", "gain"),
    recipes: tuple[str, ...] = (),
) -> list[RunSpec]:
    """The ``references`` (Grad-CAM of the plain classifier, GAIN), GAINext with masks at each budget
    and each guidance loss, and the ``recipes`` (presets) with masks at each budget."""
    _check_budgets(budgets)
    _check_guidances(guidances)
    _check_references(references, ("baseline", "gain"))

    def guided(seed: int) -> list[RunSpec]:
        runs = [RunSpec("gainext", seed, "masks", b, g) for b in budgets for g in guidances]
        return runs + [recipe(name, seed, "masks", b) for b in budgets for name in recipes]

    return _per_seed(seeds, references, guided)


def _per_seed(
    seeds: list[int],
    references: tuple[str, ...],
    annotated: Callable[[int], list[RunSpec]],
    oracle: bool = False,
) -> list[RunSpec]:
    """For each seed in turn: the references baseline and GAIN (those in ``references``), the runs
    ``annotated(seed)``, then with ``oracle`` (and ``"oracle"`` in ``references``) the baseline trained
    without the bias."""
    runs = []
    for seed in seeds:
        runs += [RunSpec(method, seed) for method in ("baseline", "gain") if method in references]
        runs += annotated(seed)
        runs += [RunSpec("baseline", seed, unbiased=True)] if oracle and "oracle" in references else []
    return runs


def _check_references(references: tuple[str, ...], known: tuple[str, ...]) -> None:
    unknown = [r for r in references if r not in known]
    if unknown:
        raise ValueError(f"unknown references {unknown}; choose from {known}")


def _check_guidances(guidances: list[str]) -> None:
    unknown = [g for g in guidances if g not in GUIDANCES]
    if unknown:
        raise ValueError(f"unknown guidance losses {unknown}; choose from {GUIDANCES}")


def _check_budgets(budgets: list[float]) -> None:
    bad = [b for b in budgets if not 0.0 < b <= 1.0]
    if bad:
        raise ValueError(f"annotation budgets must be fractions in (0, 1], got {bad}")
