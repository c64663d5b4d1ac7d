"""The ``gainx`` command line: data, train, eval, attention, demo, export, serve."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields

from gainx.data.cli import ALLOW_OUTSIDE_ROOT_HELP, add_allow_outside_root_arg, positive_int
from gainx.training.config import TrainConfig

DEBUG_HELP = "on an error, show the full Python traceback"
TRAIN_HELP = {
    "data": "data set root, layout detected: CSV manifest (manifest.csv), Pascal VOC (JPEGImages/, Annotations/), "
    "COCO instances (annotations/instances_<split>.json) or ImageFolder (<split>/<class>/<image>); docs/data.md",
    "out": "run folder: checkpoints (last.pt, best.pt), metrics.csv, tensorboard/",
    "arch": "classifier: a built-in name (gainx.models.ARCHS), timm:<name> or package.module:factory",
    "model_kwargs": "JSON object of keyword arguments for a timm: or package.module:factory model",
    "target_layer": "module path of the attention layer (default: the arch's, or the last feature map of the model)",
    "method": "baseline (L_cl) | gain (eq. 6) | gainext (eq. 8)",
    "epochs": "epochs to train (with --resume: the new total)",
    "batch_size": "images per step (per process under torchrun)",
    "lr": "base learning rate",
    "weight_decay": "weight decay of the optimizer",
    "optimizer": "optimizer",
    "momentum": "SGD momentum",
    "scheduler": "per-epoch learning-rate schedule (cosine: annealed to 0 at the last epoch)",
    "image_size": "network input size in pixels (default: a manifest's dataset.json image_size, else 224 for a "
    "manifest or ImageFolder and 320 for VOC or COCO, whatever the images' own size)",
    "guide": "VOC and COCO: the annotations that become GAINext's guides: masks (segmentation masks; the default), "
    "boxes (the annotation boxes) or none",
    "augment": "random horizontal flips of the training images (with their guides)",
    "alpha": "weight of L_am (eq. 6); default: 1 for gain (the paper's), 0 for gainext (the default recipe)",
    "omega_e": "weight of L_e (eq. 8)",
    "sigma": "soft-mask threshold (eq. 4)",
    "omega": "soft-mask scale (eq. 4)",
    "second_order": "train L_am through the Grad-CAM weights too (create_graph)",
    "freeze_bn_am": "keep batch-norm running stats unchanged in the attention-mining stream",
    "bn_statistics": "the batch-norm running statistics a checkpoint holds: recompute (over the training images "
    "with each epoch's final weights, the model in train mode; gainx.training.batch_norm), running (the layers' "
    "moving averages) or auto (recompute when fine-tuning from --weights: the averages start from the weights' "
    "data and may move slowly)",
    "am_score": "how s_c(I*) is read (eq. 5); auto: sigmoid for multi-label data, else softmax",
    "am_gradient": "what L_am trains: network (the paper's; the erased image is scored by the weights being trained, "
    "so the classifier may learn to score erasures low) or attention (scored with the weights held constant: L_am "
    "reaches them only through the attention map)",
    "am_fill": "what the erased region of I* holds: zero (eq. 3, the paper's) or context (filled in from the pixels "
    "the mask keeps, so erasing an object also removes its outline)",
    "am_warmup": "epochs of L_cl only before the attention streams start",
    "backend": "where attention -> mask -> erase runs",
    "guidance": "S_e loss of gainext; paper is eq. 7, the others are described in gainx.losses.guidance",
    "counterfactuals": "counterfactual images (annotated objects pasted onto other classes' backgrounds) added to "
    "each batch with --guidance counterfactual (default: half the batch, rounded up)",
    "counterfactual_weight": "weight of a counterfactual image in L_cl relative to an image of the batch (where it "
    "starts with --counterfactual-eta)",
    "counterfactual_eta": "step size of the online group DRO that multiplies that weight at each step, before "
    "L_cl is formed, by exp(eta (mean counterfactual L_cl - mean batch L_cl)); 0 keeps it fixed",
    "counterfactual_weight_max": "the most the group DRO raises the weight of a counterfactual image to (inf: no "
    "bound)",
    "counterfactual_jitter": "change each pasted object first: none | colour (permute its colour channels) | "
    "geometry (flip, rescale by 0.75-1.25) | all",
    "counterfactual_backgrounds": "object-free backgrounds of annotated images, labelled with no class (trained "
    "towards the uniform prediction), added to each batch with --guidance counterfactual",
    "weights": "local backbone weights file (state dict; the classifier head is re-initialized for the data's "
    "classes), or pretrained: the file an installed package ships for the arch (efficientnet_lite0); nothing is "
    "downloaded",
    "seed": "seed of weights, data order and augmentation",
    "workers": "data-loading worker processes",
    "amp": "mixed precision (CUDA only)",
    "device": "auto | cpu | cuda | cuda:N",
    "train_split": "split to train on",
    "val_split": "split evaluated after every epoch to keep best.pt; auto: the data set's val split, else "
    "--val-fraction of the training split held out (never a test split); none: no validation",
    "val_fraction": "with --val-split auto and no val split: the fraction of the training split held out to select "
    "best.pt (stratified by class, seeded by --seed, excluded from training; recorded in the checkpoint); 0: none",
    "resume": "continue the run in --out from its last.pt (a larger --epochs extends the cosine schedule)",
    "overwrite": "replace the run in --out (checkpoints, metrics.csv, tensorboard/)",
    "progress": "progress bar during each epoch (the per-epoch summary line is always printed)",
    "allow_outside_root": ALLOW_OUTSIDE_ROOT_HELP,
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, except for required options and those without one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default is None:
            return action.help
        return super()._get_help_string(action)


def _train_choices() -> dict[str, list[str]]:
    """The allowed values of the TrainConfig fields that have a fixed set."""
    from gainx.data.voc import GUIDES
    from gainx.losses import METHODS
    from gainx.losses.guidance import GUIDANCES
    from gainx.losses.terms import AM_GRADIENTS, AM_SCORES
    from gainx.ops import ERASE_FILLS
    from gainx.ops.attention_erase import available_backends
    from gainx.training.batch_norm import BN_STATISTICS
    from gainx.training.schedule import SCHEDULERS
    from gainx.training.trainer import OPTIMIZERS

    return {
        "method": list(METHODS),
        "optimizer": list(OPTIMIZERS),
        "scheduler": list(SCHEDULERS),
        "am_score": list(AM_SCORES),
        "am_gradient": list(AM_GRADIENTS),
        "am_fill": list(ERASE_FILLS),
        "bn_statistics": list(BN_STATISTICS),
        "backend": ["auto", *available_backends()],
        "guidance": list(GUIDANCES),
        "guide": list(GUIDES),
    }


def _add_train_args(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--batch-size`` for ``batch_size``); ``--model`` also sets ``arch``;
    ``--preset`` (a flag given explicitly wins over the preset's value)."""
    from gainx.models.factory import model_kwargs_arg
    from gainx.training.preset_args import BooleanGiven, StoreGiven, add_preset_arg

    choices = _train_choices()
    for f in fields(TrainConfig):
        flags = ["--" + f.name.replace("_", "-")] + (["--model"] if f.name == "arch" else [])
        help_text = TRAIN_HELP[f.name]
        if f.name == "arch":  # open-ended (timm:, module:factory), so listed rather than enforced
            from gainx.models.registry import ARCHS

            help_text = f"{help_text}; built-in: {', '.join(ARCHS)}"
        if f.default_factory is not MISSING:  # model_kwargs
            parser.add_argument(
                *flags,
                dest=f.name,
                action=StoreGiven,
                type=model_kwargs_arg,
                default=f.default_factory(),
                help=help_text,
            )
        elif f.default is MISSING:
            parser.add_argument(*flags, dest=f.name, required=True, help=help_text)
        elif isinstance(f.default, bool):
            parser.add_argument(*flags, dest=f.name, action=BooleanGiven, default=f.default, help=help_text)
        else:
            kind = {"int | None": int, "float": float, "float | None": float, "int": int}.get(str(f.type), str)
            allowed = choices.get(f.name)
            metavar = None
            if allowed and len(",".join(allowed)) > 40:  # a long set is listed in the help, not in the usage line
                metavar, help_text = f.name.upper(), f"{help_text}: {', '.join(allowed)}"
            parser.add_argument(
                *flags,
                dest=f.name,
                action=StoreGiven,
                type=kind,
                default=f.default,
                choices=allowed,
                metavar=metavar,
                help=help_text,
            )
    add_preset_arg(parser)


def _scored_guides() -> list[str]:
    """The guides of ``--guide`` (VOC and COCO) that attention maps can be scored against: all but ``none``."""
    from gainx.data.voc import GUIDES

    return [g for g in GUIDES if g != "none"]


def _add_threads_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's, one per core)"
    )


def _set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None) is not None:
        import torch

        torch.set_num_threads(args.threads)


def _default_split(data: str) -> str:
    """The data set's test split (announced on stderr)."""
    from gainx.data.splits import dataset_splits, held_out_split

    splits = dataset_splits(data)
    chosen = held_out_split(splits, "test")
    if chosen is None:
        raise ValueError(f"{data}: no test or validation split among {splits}; give --split")
    print(
        f"gainx eval: split {chosen!r} (the data set's splits: {', '.join(splits)}; choose with --split)",
        file=sys.stderr,
    )
    return chosen


def _cmd_train(args: argparse.Namespace) -> int:
    from gainx.training.preset_args import preset_values
    from gainx.training.run_folder import BEST
    from gainx.training.trainer import train

    cfg = TrainConfig(**preset_values(args, [f.name for f in fields(TrainConfig)]))
    path = train(cfg)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, once: the main process wrote the files
        best = path.parent / BEST
        print(f"checkpoint: {path}" + (f"; best validation epoch: {best}" if best.exists() else ""))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    """One JSON report (numbers rounded, ``null`` with a reason where undefined); with several ``--split``
    values, one JSON object mapping each split to its report."""
    from gainx.evaluation.report import json_report

    if not args.cues and not args.checkpoint:
        raise ValueError("give --checkpoint (evaluate a model) or --cues (score a cue folder)")
    if args.cues and args.guide is not None:
        raise ValueError("--guide applies to --checkpoint; a cue folder (--cues) is scored against the split's masks")
    evaluate_split = _cue_evaluator(args) if args.cues else _model_evaluator(args)
    splits = args.split or [_default_split(args.data)]
    reports = {split: json_report({**evaluate_split(split), "split": split}) for split in splits}
    print(json.dumps(reports[splits[0]] if len(splits) == 1 else reports, indent=2))
    return 0


def _cue_evaluator(args: argparse.Namespace) -> Callable[[str], dict]:
    from gainx.experiments.cues import evaluate_cues

    return lambda split: evaluate_cues(args.cues, args.data, split, allow_outside_root=args.allow_outside_root)


def _model_evaluator(args: argparse.Namespace) -> Callable[[str], dict]:
    from gainx.data import load_split_for_model
    from gainx.data.load import unused_boxes_hint
    from gainx.evaluation import evaluate
    from gainx.models import load_model

    model, meta = load_model(args.checkpoint, model=args.model, trust_model_code=args.trust_model_code)
    guide = _eval_guide(args.guide, meta, args.data)

    def evaluate_split(split: str) -> dict:
        dataset = load_split_for_model(args.data, split, meta, guide=guide, allow_outside_root=args.allow_outside_root)
        if list(dataset.classes) != list(meta["classes"]):
            raise ValueError(f"{args.data}: classes {dataset.classes} differ from the checkpoint's {meta['classes']}")
        report = evaluate(
            model, dataset, meta["target_layer"], batch_size=args.batch_size, localization=not args.no_localization
        )
        if not args.no_localization and not dataset.num_guided:
            hint = unused_boxes_hint(args.data, split, guide, args.allow_outside_root)
            if hint:  # images with boxes but masks asked: the reason json_report gives for the null metrics
                reason = f"no image of the split carries a mask{hint}"
                report["localization"].update(miou_undefined=reason, pointing_game_undefined=reason)
        return report

    return evaluate_split


def _eval_guide(given: str | None, meta: dict, data: str) -> str | None:
    """The guide to score the maps against: ``--guide``, else the one the checkpoint's run trained with where
    ``data`` is VOC or COCO and it is one of :func:`_scored_guides`, else None (``load_dataset``'s: masks)."""
    from gainx.data.load import GUIDED_LAYOUTS, dataset_layout

    if given is not None:
        return given
    recorded = meta["config"].get("guide")
    return recorded if recorded in _scored_guides() and dataset_layout(data) in GUIDED_LAYOUTS else None


def _cmd_attention(args: argparse.Namespace) -> int:
    from gainx.explain import explain_files

    explained = explain_files(
        args.checkpoint,
        args.images,
        args.out,
        topk=args.topk,
        class_names=args.classes,
        model=args.model,
        trust_model_code=args.trust_model_code,
    )
    for done in explained:
        print(f"{done.image}: {done.class_name} probability {done.probability:.4f} -> {done.overlay}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gainx.demo import run_demo

    run_demo(out=args.out, quick=args.quick, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from gainx.data.cli import register as register_data
    from gainx.experiments.cli import register as register_experiments
    from gainx.export.cli import register as register_export
    from gainx.models.trust import add_trust_args
    from gainx.serve.cli import register as register_serve

    parser = argparse.ArgumentParser(prog="gainx", description="Guided Attention Inference Networks (GAIN / GAINext)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="decoy benchmark: baseline vs GAIN vs GAINext, table and figure", formatter_class=HelpFormatter
    )
    demo.add_argument("--quick", action="store_true", help="smaller run (1000 training images instead of 2400)")
    demo.add_argument("--out", default="gainx_demo", help="output folder (its runs are replaced)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and the training runs")
    _add_threads_arg(demo)
    demo.set_defaults(func=_cmd_demo)

    register_data(sub)
    register_experiments(sub)

    train = sub.add_parser("train", help="train baseline / GAIN / GAINext", formatter_class=HelpFormatter)
    _add_train_args(train)
    _add_threads_arg(train)
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser(
        "eval", help="accuracy / mAP and attention localization, as JSON", formatter_class=HelpFormatter
    )
    ev.add_argument("--checkpoint", default=None, help="evaluate this model")
    ev.add_argument(
        "--cues", default=None, help="score a cue folder written by 'gainx cues' by mIoU against the split's masks"
    )
    ev.add_argument("--data", required=True, help="data set root")
    ev.add_argument(
        "--split",
        nargs="+",
        action="extend",
        default=None,
        help="split(s) to evaluate, e.g. --split val test (default: the data set's test split: test, else the "
        "first test* split by name, else val); several splits print one JSON object keyed by split",
    )
    ev.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    ev.add_argument("--no-localization", action="store_true", help="skip the attention metrics")
    ev.add_argument(
        "--guide",
        choices=_scored_guides(),
        default=None,
        help="VOC and COCO, with --checkpoint: the annotations the attention maps are scored against (default: "
        "the --guide the checkpoint's run trained with where it is masks or boxes, else masks)",
    )
    add_allow_outside_root_arg(ev)
    add_trust_args(ev)
    _add_threads_arg(ev)
    ev.set_defaults(func=_cmd_eval)

    att = sub.add_parser(
        "attention",
        help="print each image's top classes and write attention overlays at the image's size",
        formatter_class=HelpFormatter,
    )
    att.add_argument("images", nargs="+")
    att.add_argument("--checkpoint", required=True)
    att.add_argument("--out", required=True, help="output folder for the PNG overlays")
    att.add_argument("--topk", type=int, default=1, help="explain each image's K highest-scoring classes")
    att.add_argument("--classes", nargs="*", default=None, help="class names to explain instead of the top-k")
    add_trust_args(att)
    _add_threads_arg(att)
    att.set_defaults(func=_cmd_attention)

    register_export(sub)
    register_serve(sub)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    _add_debug_to_commands(parser)
    return parser


def _add_debug_to_commands(parser: argparse.ArgumentParser) -> None:
    """Add ``--debug`` to every command parser below ``parser``, nested ones (``experiment bias``) included, so
    that it is accepted after any command name; its SUPPRESS default keeps a ``--debug`` given before it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
                _add_debug_to_commands(command)


def main(argv: Sequence[str] | None = None) -> int:
    from gainx.cli_errors import describe_error

    args = build_parser().parse_args(argv)
    try:
        _set_threads(args)
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a reader that went away (``gainx eval | head``) raises here
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except Exception as exc:
        if args.debug:
            raise
        print(describe_error(args.command, exc), file=sys.stderr)
        return 2


def _stdout_closed() -> int:
    """Exit quietly when the reader of stdout has closed the pipe: point stdout at devnull so that the
    interpreter's final flush cannot fail again, and return 141 (128 + SIGPIPE), as a shell tool would."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":
    sys.exit(main())
