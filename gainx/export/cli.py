"""``gainx export``: a checkpoint or a model spec -> verified attention ONNX model (+ Triton repository)."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TRITON_FLAGS = {  # the flag giving each setting of gainx.export.triton_repo.check_triton_settings
    "model_name": "--triton-model-name",
    "max_batch_size": "--triton-max-batch-size",
    "instance_count": "--triton-instances",
    "instance_kind": "--triton-instance-kind",
}


def _model_from_spec(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any]]:
    """The ``--model`` classifier with its ``--weights`` (or, asked for, random ones) and its export settings."""
    from gainx.models import build_model, default_target_layer, load_weights

    if args.weights is None and not args.random_weights:
        raise ValueError(
            f"--model {args.model} without --weights would export random weights, whose scores and maps mean "
            f"nothing: give --weights FILE (a state dict), or --random-weights to export them on purpose "
            f"(e.g. to test a deployment)"
        )
    if args.weights is not None and args.random_weights:
        raise ValueError("give --weights or --random-weights, not both")
    num_classes = args.num_classes or (len(args.classes) if args.classes else None)
    if num_classes is None:
        raise ValueError(f"--model {args.model} needs --num-classes (or --classes NAME ...)")
    model = build_model(args.model, num_classes, model_kwargs=args.model_kwargs)
    if args.weights is not None:
        load_weights(model, args.weights)
    else:
        print(f"gainx export: warning: exporting random weights of {args.model} (--random-weights)", file=sys.stderr)
    size = args.image_size or [224, 224]
    layer = args.target_layer
    if layer is None:
        layer = default_target_layer(args.model, model, size)
        print(
            f"gainx export: target layer: {layer} (the default for {args.model}; choose another with --target-layer)",
            file=sys.stderr,
        )
    settings = {"arch": args.model, "target_layer": layer, "image_size": size, "mean": args.mean or IMAGENET_MEAN}
    return model.eval(), {**settings, "std": args.std or IMAGENET_STD}


def _cmd_export(args: argparse.Namespace) -> int:
    from gainx.export.onnx_export import export_onnx
    from gainx.export.triton_repo import check_triton_settings, write_triton_repo

    if args.triton_repo:  # before the export, which writes --out
        check_triton_settings(
            args.triton_model_name,
            args.triton_max_batch_size,
            instance_count=args.triton_instances,
            instance_kind=args.triton_instance_kind,
            names=TRITON_FLAGS,
        )
    if args.checkpoint is not None:
        for flag in ("weights", "random_weights", "num_classes", "model_kwargs"):
            if getattr(args, flag):
                raise ValueError(f"--{flag.replace('_', '-')} goes with --model alone; a checkpoint holds its own")
        source: nn.Module | str = args.checkpoint
        settings = {
            "target_layer": args.target_layer,
            "image_size": args.image_size,
            "mean": args.mean,
            "std": args.std,
            "model_spec": args.model,
            "trust_model_code": args.trust_model_code,
        }
    elif args.trust_model_code:
        raise ValueError("--trust-model-code goes with --checkpoint (it allows rebuilding the checkpoint's model)")
    else:
        source, settings = _model_from_spec(args)
    with progress_on_stderr():
        path = export_onnx(
            source,
            args.out,
            classes=args.classes,
            topk=args.topk,
            opset=args.opset,
            fp16=args.fp16,
            verify=not args.no_verify,
            verify_images=args.verify_images,
            output=args.output,
            **settings,
        )
    if args.no_verify:
        print("gainx export: not verified (--no-verify)", file=sys.stderr)
    print(f"onnx: {path}")
    if args.triton_repo:
        folder = write_triton_repo(
            path,
            args.triton_repo,
            model_name=args.triton_model_name,
            max_batch_size=args.triton_max_batch_size,
            instance_count=args.triton_instances,
            instance_kind=args.triton_instance_kind,
        )
        print(f"triton model: {folder}")
    return 0


@contextmanager
def progress_on_stderr() -> Iterator[None]:
    """Print the exporter's progress and verification result (its INFO log records: the checks, the
    tracing, the images verified on and the largest score and map differences) as ``gainx export: ...``
    lines on stderr while the context is open."""
    logger = logging.getLogger("gainx.export")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("gainx export: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _output_arg(text: str) -> str | int:
    """``--output``: an index when it is an integer (``0``, ``-1``), else a key or attribute name."""
    return int(text) if re.fullmatch(r"-?[0-9]+", text) else text


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand to the ``gainx`` parser."""
    from gainx.export.triton_repo import INSTANCE_KINDS
    from gainx.models.factory import model_kwargs_arg
    from gainx.models.trust import add_trust_args

    p = subparsers.add_parser("export", help="ONNX model returning scores, classes and attention maps")
    p.add_argument("--checkpoint", help="gainx checkpoint (.pt): model, classes, layer, size, normalization")
    p.add_argument(
        "--model",
        metavar="SPEC",
        help="classifier spec, as for gainx train: a built-in name, timm:<name> or package.module:factory "
        "(with --weights, or --random-weights); with --checkpoint, the checkpoint's own spec, given to allow "
        "rebuilding it (it must equal the recorded one)",
    )
    add_trust_args(p, model_flag=False)
    p.add_argument("--model-kwargs", type=model_kwargs_arg, default=None, help="JSON keyword arguments of --model")
    p.add_argument(
        "--output",
        type=_output_arg,
        default=None,
        metavar="KEY",
        help="where the scores are in what the model returns: a key or attribute (logits for Hugging Face "
        "...ForImageClassification models) or an index (default: the model returns the scores tensor)",
    )
    p.add_argument("--weights", default=None, help="state dict for --model (tensors only; must fit it exactly)")
    p.add_argument("--random-weights", action="store_true", help="export --model with random weights, on purpose")
    p.add_argument("--num-classes", type=int, default=None, help="outputs of --model (default: len(--classes))")
    p.add_argument("--classes", nargs="+", default=None, metavar="NAME", help="class names (default: the checkpoint's)")
    p.add_argument("--target-layer", default=None, help="attention layer (default: the checkpoint's or the model's)")
    p.add_argument("--out", required=True, help="output .onnx file (written only if verification passes)")
    p.add_argument("--topk", type=int, default=1, help="maps returned when no class_ids are given")
    p.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="export/verification image size (default: the checkpoint's; with --model 224 224)",
    )
    p.add_argument(
        "--mean", type=float, nargs=3, default=None, help="RGB mean (default: the checkpoint's or ImageNet's)"
    )
    p.add_argument("--std", type=float, nargs=3, default=None, help="RGB std (default: the checkpoint's or ImageNet's)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--fp16", action="store_true", help="half-precision graph (fp32 inputs/outputs)")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument(
        "--verify-images", default=None, metavar="DIR", help="also verify on (up to 8 of) the images in this folder"
    )
    p.add_argument("--triton-repo", default=None, help="also write a Triton Inference Server model repository here")
    p.add_argument("--triton-model-name", default="gainx_attention")
    p.add_argument("--triton-max-batch-size", type=int, default=32)
    p.add_argument(
        "--triton-instance-kind",
        choices=list(INSTANCE_KINDS),
        default="auto",
        help="devices of the Triton model instances: KIND_AUTO (every GPU, else the CPU), KIND_CPU or KIND_GPU",
    )
    p.add_argument(
        "--triton-instances", type=int, default=1, metavar="N", help="Triton model instances per device (default 1)"
    )
    p.set_defaults(func=_needs_a_source(p))


def _needs_a_source(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``_cmd_export``, after the usage error of a command line giving neither --checkpoint nor --model."""

    def run(args: argparse.Namespace) -> int:
        if args.checkpoint is None and args.model is None:
            parser.error("one of the arguments --checkpoint --model is required")
        return _cmd_export(args)

    return run
