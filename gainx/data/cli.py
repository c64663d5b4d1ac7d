"""``gainx data ...`` sub-commands (registered by gainx/cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gainx.data.synthetic import write_decoy


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data`` (with ``decoy``) to the top-level ``gainx`` sub-parsers."""
    data = subparsers.add_parser("data", help="dataset tools")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    decoy = commands.add_parser("decoy", help="write the decoy-digits benchmark (CSV manifest layout)")
    decoy.add_argument("--out", type=Path, required=True, help="output folder")
    decoy.add_argument("--size", type=int, default=48, help="canvas size in pixels (default 48)")
    decoy.add_argument("--seed", type=int, default=0)
    decoy.add_argument("--mask-fraction", type=float, default=0.05, help="fraction of train images with a mask")
    decoy.add_argument("--train-size", type=int, default=2000)
    decoy.add_argument("--test-size", type=int, default=500, help="images in each of the two test splits")
    decoy.set_defaults(func=_decoy)


def _decoy(args: argparse.Namespace) -> int:
    out = write_decoy(
        args.out,
        image_size=args.size,
        seed=args.seed,
        mask_fraction=args.mask_fraction,
        train_size=args.train_size,
        test_size=args.test_size,
    )
    masked = round(args.mask_fraction * args.train_size)
    print(
        f"decoy dataset in {out}: train {args.train_size} ({masked} with masks), "
        f"test_consistent {args.test_size}, test_random {args.test_size}, {args.size}x{args.size}, seed {args.seed}"
    )
    return 0
