"""The README's "your own data" walkthrough, run as written on a tiny generated ImageFolder.

The commands are read from the README's ``<!-- walkthrough -->`` block, so the README and this test cannot
drift apart. Only what makes the run tiny is changed: the model (``small_cnn``), the input size (32 px) and
the epochs (1); ``gainx`` and ``python`` run in this interpreter; ``gainx serve`` runs as a real server
process on 127.0.0.1 (a free port instead of 8000) and the ``curl`` line sends it one request.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from folder_helpers import write_imagefolder  # tests/ is on sys.path under pytest
from PIL import Image

from gainx.serve.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- walkthrough -->\n```bash\n(?P<body>.*?)```", re.S)
TINY = {"--model resnet18": "--model small_cnn", "--image-size 224": "--image-size 32", "--epochs 10": "--epochs 1"}
STEP_TIMEOUT = 300


def walkthrough_commands(readme: Path = ROOT / "README.md") -> list[str]:
    """The command lines of the README's walkthrough block, in order."""
    match = BLOCK.search(readme.read_text(encoding="utf-8"))
    assert match, f"{readme} has no ```bash block after <!-- walkthrough -->"
    return [line.strip() for line in match["body"].splitlines() if line.strip() and not line.startswith("#")]


def tiny(command: str) -> str:
    for big, small in TINY.items():
        command = command.replace(big, small)
    python = shlex.quote(sys.executable)
    return re.sub(r"^gainx ", f"{python} -m gainx ", re.sub(r"^python ", f"{python} ", command))


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, timeout=STEP_TIMEOUT)
    assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_walkthrough_block_is_the_documented_sequence():
    steps = [c.split()[:2] for c in walkthrough_commands()]
    assert [s[1] if s[0] == "gainx" else s[0] for s in steps] == [
        "train", "eval", "attention", "export", "serve", "curl", "python"
    ]  # fmt: skip
    assert all(big in " ".join(walkthrough_commands()) for big in TINY)  # what the test shrinks is there


@pytest.mark.skipif(shutil.which("curl") is None, reason="the walkthrough's request is a curl command")
def test_readme_walkthrough_end_to_end(tmp_path: Path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("uvicorn")
    write_imagefolder(tmp_path / "photos", {"train": 4, "val": 2})
    outputs = {}
    server = None
    try:
        for command in walkthrough_commands():
            if command.startswith("gainx serve "):
                args = shlex.split(command.rstrip("& "))[2:]
                port = args.index("--port")
                server = ServerProcess(tmp_path / args[0], tmp_path / "server.log", *args[1:port], *args[port + 2 :])
                continue
            if command.startswith("curl "):
                assert server is not None, "the walkthrough sends its request before starting gainx serve"
                command = command.replace("http://127.0.0.1:8000", server.url)
            outputs[command.split()[1] if command.startswith("gainx") else command.split()[0]] = run(
                tiny(command), tmp_path
            )
    finally:
        if server is not None:
            server.stop()

    assert "target layer: features" in outputs["train"].stderr and (tmp_path / "run" / "best.pt").is_file()
    report = json.loads(outputs["eval"].stdout)
    assert report["split"] == "val" and report["num_images"] == 4 and 0 <= report["accuracy"] <= 1
    overlays = sorted((tmp_path / "overlays").glob("*.png"))
    assert len(overlays) == 2 and all("probability" in line for line in outputs["attention"].stdout.splitlines())
    assert "verified: max score difference" in outputs["export"].stderr
    answer = json.loads((tmp_path / "answer.json").read_text())
    top = answer["predictions"][0]
    assert top["name"] in ("cat", "dog") and 0 < top["probability"] <= 1
    name, probability = outputs["python"].stdout.split()
    assert name == top["name"] and float(probability) == top["probability"]
    heatmap = (tmp_path / "heatmap.png").read_bytes()
    assert heatmap == base64.b64decode(top["heatmap_png"])
    assert Image.open(io.BytesIO(heatmap)).size == (32, 32)  # the model's input size
