"""``python -m gainx.serve MODEL.onnx ...``: the server without the rest of the CLI."""

import argparse
import sys

from gainx.serve.cli import add_arguments, run

parser = argparse.ArgumentParser(prog="gainx serve", description="HTTP inference server for an exported ONNX model")
add_arguments(parser)
sys.exit(run(parser.parse_args()))
