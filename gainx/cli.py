"""The ``gainx`` command line: data, train, eval, attention, demo, export, serve."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import MISSING, fields

from gainx.training.config import TrainConfig

TRAIN_HELP = {
    "data": "data set root (CSV manifest folder or Pascal VOC 2012)",
    "out": "run folder: checkpoints (last.pt), metrics.csv, tensorboard/",
    "arch": "classifier architecture (see gainx.models.ARCHS)",
    "target_layer": "module path of the attention layer (default: the arch's)",
    "method": "baseline | gain (eq. 6) | gainext (eq. 8)",
    "alpha": "weight of L_am (eq. 6)",
    "omega_e": "weight of L_e (eq. 8)",
    "sigma": "soft-mask threshold (eq. 4)",
    "omega": "soft-mask scale (eq. 4)",
    "second_order": "train L_am through the Grad-CAM weights too (create_graph)",
    "freeze_bn_am": "keep batch-norm running stats unchanged in the attention-mining stream",
    "am_score": "auto | sigmoid | softmax | logit: how s_c(I*) is read (eq. 5)",
    "am_warmup": "epochs of L_cl only before the attention streams start",
    "backend": "auto | eager | triton: where attention -> mask -> erase runs",
    "guidance": "S_e loss of gainext: paper (eq. 7) | scaled | all_classes | signed | rrr | counterfactual "
    "(gainx.losses.guidance)",
    "weights": "local backbone weights file (state dict); nothing is downloaded",
    "resume": "continue from OUT/last.pt",
    "val_split": "split evaluated after every epoch",
}


def _add_train_args(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--batch-size`` for ``batch_size``)."""
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = TRAIN_HELP.get(f.name)
        if f.default is MISSING:
            parser.add_argument(flag, dest=f.name, required=True, help=help_text)
        elif isinstance(f.default, bool):
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default, help=help_text
            )
        else:
            kind = {"int | None": int, "float": float, "int": int}.get(str(f.type), str)
            parser.add_argument(flag, dest=f.name, type=kind, default=f.default, help=help_text)


def _cmd_train(args: argparse.Namespace) -> int:
    from gainx.training.trainer import train

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    path = train(cfg)
    print(f"checkpoint: {path}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.cues:
        from gainx.experiments.cues import evaluate_cues

        print(json.dumps({**evaluate_cues(args.cues, args.data, args.split), "split": args.split}, indent=2))
        return 0
    if not args.checkpoint:
        raise ValueError("give --checkpoint (evaluate a model) or --cues (score a cue folder)")
    from gainx.data import load_dataset
    from gainx.evaluation import evaluate
    from gainx.models import load_model

    model, meta = load_model(args.checkpoint)
    dataset = load_dataset(args.data, args.split, image_size=tuple(meta["image_size"]))
    if list(dataset.classes) != list(meta["classes"]):
        raise ValueError(f"{args.data}: classes {dataset.classes} differ from the checkpoint's {meta['classes']}")
    report = evaluate(
        model, dataset, meta["target_layer"], batch_size=args.batch_size, localization=not args.no_localization
    )
    report["split"] = args.split
    print(json.dumps(report, indent=2))
    return 0


def _cmd_attention(args: argparse.Namespace) -> int:
    from gainx.explain import explain_files

    for path in explain_files(args.checkpoint, args.images, args.out, topk=args.topk, class_names=args.classes):
        print(path)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gainx.demo import run_demo

    run_demo(out=args.out, quick=args.quick, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from gainx.data.cli import register as register_data
    from gainx.experiments.cli import register as register_experiments
    from gainx.export.cli import register as register_export
    from gainx.serve.cli import register as register_serve

    parser = argparse.ArgumentParser(prog="gainx", description="Guided Attention Inference Networks (GAIN / GAINext)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="decoy benchmark: baseline vs GAIN vs GAINext, table and figure")
    demo.add_argument("--quick", action="store_true", help="smaller run (1000 training images instead of 2400)")
    demo.add_argument("--out", default="gainx_demo", help="output folder")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)

    register_data(sub)
    register_experiments(sub)

    train = sub.add_parser("train", help="train baseline / GAIN / GAINext")
    _add_train_args(train)
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser("eval", help="accuracy / mAP and attention localization, as JSON")
    ev.add_argument("--checkpoint", default=None, help="evaluate this model")
    ev.add_argument(
        "--cues", default=None, help="score a cue folder written by 'gainx cues' by mIoU against the split's masks"
    )
    ev.add_argument("--data", required=True)
    ev.add_argument("--split", default="test")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--no-localization", action="store_true", help="skip the attention metrics")
    ev.set_defaults(func=_cmd_eval)

    att = sub.add_parser("attention", help="write attention heatmap overlays for images")
    att.add_argument("images", nargs="+")
    att.add_argument("--checkpoint", required=True)
    att.add_argument("--out", required=True, help="output folder for the PNG overlays")
    att.add_argument("--topk", type=int, default=1)
    att.add_argument("--classes", nargs="*", default=None, help="class names to explain instead of the top-k")
    att.set_defaults(func=_cmd_attention)

    register_export(sub)
    register_serve(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, TypeError) as exc:
        print(f"gainx {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
