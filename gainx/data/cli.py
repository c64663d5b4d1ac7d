"""``gainx data ...`` sub-commands (registered by gainx/cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gainx.data.synthetic import write_decoy, write_photos

ALLOW_OUTSIDE_ROOT_HELP = (
    "accept data files that leave the data folder (../, absolute paths, symlinks out) in any "
    "layout: manifest paths, VOC split ids, COCO file names, ImageFolder symlinks"
)


def add_allow_outside_root_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--allow-outside-root`` (as ``gainx train`` has it) to a command that reads a data set."""
    parser.add_argument("--allow-outside-root", action="store_true", help=ALLOW_OUTSIDE_ROOT_HELP)


def _int_at_least(text: str, minimum: int) -> int:
    """``text`` as an int; an ``argparse.ArgumentTypeError`` (a usage error naming the flag) below ``minimum``."""
    value = int(text)
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """The argparse type of a count that must be at least 1 (threads, jobs, epochs, images)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """The argparse type of an int that must be at least 0 (seeds, optional counts)."""
    return _int_at_least(text, 0)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data`` (with ``decoy`` and ``photos``) to the top-level ``gainx`` sub-parsers."""
    data = subparsers.add_parser("data", help="dataset tools")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    decoy = commands.add_parser("decoy", help="write the decoy-digits benchmark (CSV manifest layout)")
    _generator_arguments(decoy, train_size=2000, test_size=500, context="swatch colour")
    decoy.set_defaults(func=_decoy)
    photos = commands.add_parser(
        "photos", help="write the photo-context bias benchmark: shapes on crops of real photographs (CSV manifest)"
    )
    _generator_arguments(photos, train_size=2000, test_size=300, context="photo")
    photos.add_argument("--val-size", type=int, default=None, help="images in val (default: --test-size)")
    photos.set_defaults(func=_photos)


def _generator_arguments(parser: argparse.ArgumentParser, train_size: int, test_size: int, context: str) -> None:
    """The arguments every benchmark generator takes (``context``: what the bias ties to the label)."""
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--size", type=int, default=48, help="canvas size in pixels (default 48)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--mask-fraction", type=float, default=0.05, help="fraction of train images with a mask")
    parser.add_argument("--train-size", type=int, default=train_size)
    parser.add_argument("--test-size", type=int, default=test_size, help="images in each of the two test splits")
    parser.add_argument(
        "--bias", type=float, default=1.0, help=f"probability that a train image's {context} is its label's (default 1)"
    )


def _sizes(args: argparse.Namespace) -> dict[str, int | float]:
    return {
        "image_size": args.size,
        "seed": args.seed,
        "mask_fraction": args.mask_fraction,
        "train_size": args.train_size,
        "test_size": args.test_size,
        "bias": args.bias,
    }


def _decoy(args: argparse.Namespace) -> int:
    out = write_decoy(args.out, **_sizes(args))
    masked = round(args.mask_fraction * args.train_size)
    print(
        f"decoy dataset in {out}: train {args.train_size} ({masked} with masks, bias {args.bias:g}), "
        f"test_consistent {args.test_size}, test_random {args.test_size}, {args.size}x{args.size}, seed {args.seed}"
    )
    return 0


def _photos(args: argparse.Namespace) -> int:
    out = write_photos(args.out, **_sizes(args), val_size=args.val_size)
    masked = round(args.mask_fraction * args.train_size)
    val = args.test_size if args.val_size is None else args.val_size
    print(
        f"photo-context dataset in {out}: train {args.train_size} ({masked} with masks, bias {args.bias:g}), "
        f"train_unbiased {args.train_size} (the oracle's), val {val}, test_consistent {args.test_size}, "
        f"test_conflicting {args.test_size}, {args.size}x{args.size}, seed {args.seed}"
    )
    return 0
