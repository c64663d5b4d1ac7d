"""``gainx export``: checkpoint -> verified attention ONNX model (+ Triton repository)."""

from __future__ import annotations

import argparse


def _cmd_export(args: argparse.Namespace) -> int:
    from gainx.export.onnx_export import export_onnx
    from gainx.export.triton_repo import write_triton_repo

    path = export_onnx(
        args.checkpoint,
        args.out,
        topk=args.topk,
        image_size=args.image_size,
        opset=args.opset,
        fp16=args.fp16,
        verify=not args.no_verify,
        verify_images=args.verify_images,
    )
    print(f"onnx: {path}")
    if args.triton_repo:
        folder = write_triton_repo(
            path, args.triton_repo, model_name=args.triton_model_name, max_batch_size=args.triton_max_batch_size
        )
        print(f"triton model: {folder}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand to the ``gainx`` parser."""
    p = subparsers.add_parser("export", help="ONNX model returning scores, classes and attention maps")
    p.add_argument("--checkpoint", required=True, help="gainx checkpoint (.pt)")
    p.add_argument("--out", required=True, help="output .onnx file (written only if verification passes)")
    p.add_argument("--topk", type=int, default=1, help="maps returned when no class_ids are given")
    p.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="export/verification image size (default: the checkpoint's)",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--fp16", action="store_true", help="half-precision graph (fp32 inputs/outputs)")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument(
        "--verify-images", default=None, metavar="DIR", help="also verify on (up to 8 of) the images in this folder"
    )
    p.add_argument("--triton-repo", default=None, help="also write a Triton Inference Server model repository here")
    p.add_argument("--triton-model-name", default="gainx_attention")
    p.add_argument("--triton-max-batch-size", type=int, default=32)
    p.set_defaults(func=_cmd_export)
