"""Shared fixtures: tiny models and a tiny decoy data set (generated, never downloaded)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run in Triton's interpreter. The flag is read when
    # `triton` is imported (torchvision and gainx import it), so it is set before them.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from gainx.data.synthetic import write_decoy  # noqa: E402
from gainx.models import SmallCNN  # noqa: E402

# The checkout's bench/ (benchmark tooling, not part of the installed package) is importable for the tests of
# that tooling. Appended after gainx is imported, so an installed gainx keeps precedence over ./gainx.
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker takes its share of the cores: torch's default (all of them per process)
    oversubscribes the machine as soon as two workers run tensor code at once."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // workers))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--runslow", action="store_true", help="also run the tests marked slow (the full model zoos, end-to-end runs)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``slow`` unless ``--runslow`` (or a ``-m`` expression naming ``slow``) asks for them."""
    if config.getoption("--runslow") or "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def small_cnn() -> SmallCNN:
    return SmallCNN(num_classes=5, width=8).eval()


@pytest.fixture(scope="session")
def decoy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small decoy benchmark (24x24 images, masks on a quarter of the train split)."""
    return write_decoy(
        tmp_path_factory.mktemp("decoy"), image_size=24, seed=1, mask_fraction=0.25, train_size=96, test_size=32
    )
