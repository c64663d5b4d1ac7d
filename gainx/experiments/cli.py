"""``gainx experiment bias|localization`` and ``gainx cues`` (wired by ``register``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gainx.data.cli import add_allow_outside_root_arg, non_negative_int, positive_int
from gainx.experiments.specs import BIAS_BENCHMARKS, RECIPES, REFERENCES
from gainx.losses.counterfactual import JITTERS
from gainx.losses.guidance import GUIDANCES
from gainx.losses.terms import AM_GRADIENTS
from gainx.ops import ERASE_FILLS
from gainx.training.presets import PRESETS

DATA_FLAGS = ("consistent_split", "conflicting_split", "oracle_split")  # --data only


def _profile(args: argparse.Namespace):
    from gainx.experiments.specs import FULL, QUICK

    base = QUICK if args.quick else FULL
    return base.with_overrides(
        epochs=args.epochs,
        train_size=args.train_size,
        test_size=args.test_size,
        image_size=args.image_size,
        arch=args.model,
        weights=args.weights,
        target_layer=args.target_layer,
        alpha=args.alpha,
        sigma=args.sigma,
        am_gradient=args.am_gradient,
        am_fill=args.am_fill,
        omega_e=args.omega_e,
        counterfactuals=args.counterfactuals,
        counterfactual_weight=args.counterfactual_weight,
        counterfactual_eta=args.counterfactual_eta,
        counterfactual_weight_max=args.counterfactual_weight_max,
        counterfactual_jitter=args.counterfactual_jitter,
        counterfactual_backgrounds=args.counterfactual_backgrounds,
        am_warmup=args.am_warmup,
        second_order=args.second_order or None,
    )


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of every experiment runner from the shared flags: profile, threads, jobs, references."""
    return {"profile": _profile(args), "threads": args.threads, "jobs": args.jobs, "references": tuple(args.references)}


def _cmd_bias(args: argparse.Namespace) -> int:
    from gainx.experiments.bias import run_bias, run_bias_data

    if args.data is None:
        given = [f"--{name.replace('_', '-')}" for name in DATA_FLAGS if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} name splits of --data DIR; --benchmark {args.benchmark} has its own")
        run_bias(
            args.benchmark,
            args.out,
            seeds=args.seeds,
            budgets=args.budgets,
            guidance_budget=args.guidance_budget,
            guidances=list(GUIDANCES) if args.guidances is None else args.guidances,
            **_run_options(args),
            recipes=() if args.recipes is None else tuple(args.recipes),
        )
        return 0
    missing = [f"--{name.replace('_', '-')}" for name in DATA_FLAGS[:2] if getattr(args, name) is None]
    if missing:
        raise ValueError(
            f"--data needs {' and '.join(missing)}: the names of its bias-consistent and bias-conflicting splits"
        )
    run_bias_data(
        args.data,
        args.out,
        args.consistent_split,
        args.conflicting_split,
        train_split=args.train_split,
        oracle_split=args.oracle_split,
        image_size=args.image_size,
        seeds=args.seeds,
        guidances=["paper"] if args.guidances is None else args.guidances,
        **_run_options(args),
        recipes=RECIPES if args.recipes is None else tuple(args.recipes),
    )
    return 0


def _cmd_localization(args: argparse.Namespace) -> int:
    from gainx.experiments.localization import run_localization

    run_localization(
        args.out,
        seeds=args.seeds,
        budgets=args.budgets,
        guidances=args.guidances,
        **_run_options(args),
        recipes=tuple(args.recipes),
    )
    return 0


def _cmd_cues(args: argparse.Namespace) -> int:
    from gainx.experiments.cues import evaluate_cues, write_cues

    out = write_cues(
        args.checkpoint,
        args.data,
        args.split,
        args.out,
        batch_size=args.batch_size,
        model=args.model,
        trust_model_code=args.trust_model_code,
        allow_outside_root=args.allow_outside_root,
    )
    print(f"cues written to {out}")
    if args.score:
        scores = evaluate_cues(out, args.data, args.split, allow_outside_root=args.allow_outside_root)
        print(json.dumps(scores, indent=2))
    return 0


def _common(p: argparse.ArgumentParser, budgets: list[float]) -> None:
    p.add_argument("--out", required=True, help="experiment folder: data/, runs/, results.json, results.md, figures")
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--budgets",
        type=float,
        nargs="*",
        default=budgets,
        help="fractions of training images with annotation (none: no paper-L_e budget runs)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes (tests, smoke runs)")
    p.add_argument("--epochs", type=positive_int, default=None, help="override the profile's epochs")
    p.add_argument("--train-size", type=positive_int, default=None, help="override the profile's training images")
    p.add_argument("--test-size", type=positive_int, default=None, help="override the profile's images per test split")
    p.add_argument("--image-size", type=int, default=None, help="override the profile's image size")
    p.add_argument(
        "--model",
        default=None,
        help="the network every run trains (default small_cnn; any gainx train --model, e.g. efficientnet_lite0)",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="its starting weights, as gainx train --weights: a local state dict, or pretrained (the file an installed "
        "package ships, efficientnet_lite0); default: from scratch",
    )
    p.add_argument(
        "--target-layer",
        default=None,
        help="the layer of the attention (default: the arch's)",
    )
    p.add_argument("--alpha", type=float, default=None, help="override the weight of L_am (eq. 6)")
    p.add_argument("--sigma", type=float, default=None, help="override the threshold of the soft mask T (eq. 4)")
    p.add_argument(
        "--am-gradient",
        choices=AM_GRADIENTS,
        default=None,
        help="override what L_am trains: network (the paper's) or attention (the weights held constant on the erased "
        "image)",
    )
    p.add_argument(
        "--am-fill",
        choices=ERASE_FILLS,
        default=None,
        help="override what the erased region holds: zero (eq. 3) or context (filled in from the kept pixels)",
    )
    p.add_argument("--omega-e", type=float, default=None, help="override the weight of the guidance loss (eq. 8)")
    p.add_argument(
        "--counterfactuals",
        type=non_negative_int,
        default=None,
        help="override the pasted images per batch (counterfactual)",
    )
    p.add_argument(
        "--counterfactual-weight", type=float, default=None, help="override their weight in L_cl (counterfactual)"
    )
    p.add_argument(
        "--counterfactual-eta",
        type=float,
        default=None,
        help="override the group-DRO step size of their weight (counterfactual; 0: fixed)",
    )
    p.add_argument(
        "--counterfactual-weight-max",
        type=float,
        default=None,
        help="override the most the group DRO raises their weight to (counterfactual)",
    )
    p.add_argument(
        "--counterfactual-jitter",
        choices=JITTERS,
        default=None,
        help="override what changes in each pasted object (counterfactual; gainx.losses.counterfactual.JITTERS)",
    )
    p.add_argument(
        "--counterfactual-backgrounds",
        type=non_negative_int,
        default=None,
        help="override the object-free backgrounds (no label) per batch (counterfactual)",
    )
    p.add_argument(
        "--am-warmup", type=non_negative_int, default=None, help="override the epochs of L_cl only before GAIN starts"
    )
    p.add_argument(
        "--second-order", action="store_true", help="differentiate through the Grad-CAM weights (create_graph)"
    )
    p.add_argument(
        "--threads", type=positive_int, default=1, help="torch intra-op threads per run (1 is fastest on a busy CPU)"
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="runs trained at the same time, each in its own process (e.g. one per core)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``experiment bias``, ``experiment localization`` and ``cues`` to the gainx CLI."""
    from gainx.models.trust import add_trust_args

    exp = subparsers.add_parser("experiment", help="reproduce the paper's claims (bias removal, localization)")
    which = exp.add_subparsers(dest="experiment", required=True)
    bias = which.add_parser(
        "bias",
        help="baseline / GAIN / GAINext (masks, boxes, budgets, guidance losses) and the recipes on a bias "
        "benchmark or on your own data (--data)",
    )
    source = bias.add_mutually_exclusive_group(required=True)
    source.add_argument("--benchmark", choices=BIAS_BENCHMARKS, help="a generated bias benchmark")
    source.add_argument(
        "--data",
        default=None,
        help="your own data set (any layout gainx train reads) with a bias-consistent and a bias-conflicting test "
        "split (--consistent-split, --conflicting-split); trained on --train-split with the masks or boxes it has "
        "(--budgets, --guidance-budget, --train-size and --test-size do not apply)",
    )
    bias.add_argument("--consistent-split", default=None, help="--data: the split where the bias holds")
    bias.add_argument(
        "--conflicting-split", default=None, help="--data: the split where the bias is broken (the headline)"
    )
    bias.add_argument("--train-split", default="train", help="--data: the split to train on")
    bias.add_argument(
        "--oracle-split",
        default=None,
        help="--data: a training split drawn without the bias; the oracle (the baseline trained on it) is the "
        "reference of what the network can learn at this size (without it the oracle is skipped)",
    )
    _common(bias, [0.01, 0.02, 0.05, 0.10])
    bias.add_argument(
        "--guidance-budget", type=float, default=0.05, help="budget (masks) of the guidance-loss variants"
    )
    bias.add_argument(
        "--guidances",
        nargs="*",
        choices=GUIDANCES,
        default=None,
        help="guidance losses of the GAINext runs (default: all with --benchmark, paper with --data)",
    )
    bias.add_argument(
        "--recipes",
        nargs="*",
        choices=list(PRESETS),
        default=None,
        help="presets (gainx.training.presets) run as recipes of their own, with their settings "
        f"(default: none with --benchmark, {' '.join(RECIPES)} with --data)",
    )
    bias.add_argument(
        "--references",
        nargs="*",
        choices=REFERENCES,
        default=list(REFERENCES),
        help="runs without annotation (oracle: the baseline trained without the bias: cooccur, or --data with "
        "--oracle-split)",
    )
    bias.set_defaults(func=_cmd_bias)
    loc = which.add_parser(
        "localization",
        help="cue mIoU, pointing game and the erasure test (does each model read the object or the erasure?) "
        "of Grad-CAM, GAIN, GAINext on shapes-on-clutter",
    )
    _common(loc, [0.05])
    loc.add_argument(
        "--guidances", nargs="*", choices=GUIDANCES, default=["paper"], help="guidance losses of the GAINext runs"
    )
    loc.add_argument(
        "--recipes",
        nargs="*",
        choices=list(PRESETS),
        default=[],
        help="presets (gainx.training.presets) run as recipes of their own, with masks at each budget",
    )
    loc.add_argument(
        "--references", nargs="*", choices=("baseline", "gain"), default=["baseline", "gain"], help="runs without masks"
    )
    loc.set_defaults(func=_cmd_localization)

    cues = subparsers.add_parser("cues", help="write localization cues as PNG label maps (+ manifest)")
    cues.add_argument("--checkpoint", required=True)
    cues.add_argument("--data", required=True)
    cues.add_argument("--split", required=True)
    cues.add_argument("--out", required=True)
    cues.add_argument("--batch-size", type=positive_int, default=64)
    cues.add_argument("--score", action="store_true", help="also print the cues' mIoU against the split's masks")
    add_allow_outside_root_arg(cues)
    add_trust_args(cues)
    cues.set_defaults(func=_cmd_cues)
