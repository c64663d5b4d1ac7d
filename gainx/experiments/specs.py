"""What the experiments run: benchmarks, size profiles and the run matrix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from gainx.data.synthetic import SHAPES, write_cooccur, write_decoy, write_shapes
from gainx.losses.guidance import GUIDANCES


@dataclass(frozen=True)
class Benchmark:
    """A generated data set and the roles of its test splits."""

    name: str
    write: Callable[..., Path]  # write(out, image_size=, seed=, mask_fraction=, train_size=, test_size=)
    splits: tuple[str, ...]  # evaluated test splits
    main_split: str  # the split whose accuracy is the headline (bias-conflicting, or the test set)
    description: str
    unbiased: dict[str, Any] | None = None  # generator arguments without the bias (for the oracle run)


BENCHMARKS: dict[str, Benchmark] = {
    "decoy": Benchmark(
        "decoy",
        write_decoy,
        ("test_consistent", "test_random"),
        "test_random",
        "decoy digits: a corner colour swatch encodes the label in train, random in test_random",
    ),
    "cooccur": Benchmark(
        "cooccur",
        write_cooccur,
        ("test_consistent", "test_conflicting"),
        "test_conflicting",
        "shapes on a class-specific textured band (boats on water); another class's band in test_conflicting",
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


@dataclass(frozen=True)
class Profile:
    """Data and training sizes of one experiment scale."""

    image_size: int
    train_size: int
    test_size: int
    epochs: int
    batch_size: int = 64
    lr: float = 3e-3
    am_warmup: int = 1
    alpha: float = 1.0  # weight of L_am (eq. 6)
    omega_e: float = 10.0  # weight of the guidance loss (eq. 8)
    counterfactuals: int = 32  # pasted images per batch (guidance "counterfactual")
    counterfactual_weight: float = 4.0  # their weight in L_cl relative to a batch image
    counterfactual_jitter: str = "none"  # none | colour | geometry | all (gainx.losses.counterfactual.JITTERS)
    counterfactual_backgrounds: int = 0  # object-free backgrounds per batch, labelled with no class
    second_order: bool = False  # train through the Grad-CAM weights too

    def with_overrides(self, **values: Any) -> Profile:
        return replace(self, **{k: v for k, v in values.items() if v is not None})


# Full size: the whole set (decoy 13 + cooccur 14 configurations + localization 3, x 3 seeds = 90 runs)
# took 21 minutes of wall time on a shared 2-core CPU (two processes, one thread each; docs/experiments.md).
FULL = Profile(image_size=32, train_size=800, test_size=250, epochs=4)
QUICK = Profile(image_size=24, train_size=100, test_size=24, epochs=2)


@dataclass(frozen=True)
class RunSpec:
    """One training run: method, its supervision and guidance loss, and the seed."""

    method: str  # baseline | gain | gainext
    seed: int
    annotation: str = "none"  # none | masks | boxes
    budget: float = 0.0  # fraction of training images that carry the annotation
    guidance: str = "paper"
    unbiased: bool = False  # train on the benchmark without its bias (an upper reference)

    @property
    def key(self) -> str:
        """Name of the configuration (the same for every seed)."""
        if self.unbiased:
            return f"{self.method}-unbiased-data"
        if self.method != "gainext":
            return self.method
        tail = "" if self.guidance == "paper" else f"-{self.guidance}"
        return f"gainext-{self.annotation}-{self.budget:g}{tail}"

    @property
    def name(self) -> str:
        return f"{self.key}-seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "key": self.key}


REFERENCES = ("baseline", "gain", "oracle")  # the runs without annotation


def bias_matrix(
    seeds: list[int],
    budgets: list[float],
    guidance_budget: float,
    guidances: list[str],
    oracle: bool = False,
    references: tuple[str, ...] = REFERENCES,
) -> list[RunSpec]:
    """The ``references`` without annotation (baseline, GAIN and, with ``oracle``, the baseline trained on
    the benchmark without its bias), GAINext with the paper's L_e (masks and boxes at every budget) and
    the other guidance losses (masks at ``guidance_budget``)."""
    _check_budgets(budgets + [guidance_budget])
    _check_guidances(guidances)
    _check_references(references, REFERENCES)
    runs = []
    for seed in seeds:
        runs += [RunSpec(method, seed) for method in ("baseline", "gain") if method in references]
        runs += [RunSpec("gainext", seed, kind, b) for kind in ("masks", "boxes") for b in budgets]
        runs += [RunSpec("gainext", seed, "masks", guidance_budget, g) for g in guidances if g != "paper"]
        runs += [RunSpec("baseline", seed, unbiased=True)] if oracle and "oracle" in references else []
    return runs


def localization_matrix(
    seeds: list[int],
    budgets: list[float],
    guidances: list[str] = ("paper",),
    references: tuple[str, ...] = ("baseline", "gain"),
) -> list[RunSpec]:
    """The ``references`` (Grad-CAM of the plain classifier, GAIN) and GAINext with masks at each budget
    and each guidance loss."""
    _check_budgets(budgets)
    _check_guidances(guidances)
    _check_references(references, ("baseline", "gain"))
    runs = []
    for seed in seeds:
        runs += [RunSpec(method, seed) for method in ("baseline", "gain") if method in references]
        runs += [RunSpec("gainext", seed, "masks", b, g) for b in budgets for g in guidances]
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
