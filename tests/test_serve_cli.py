"""`gainx serve` command line: flags, and start-up refusals that happen before serving."""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gainx.serve.cli import listen, register, run
from gainx.serve.testing import REPO


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gainx")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["serve", *argv])


def test_flags_and_defaults() -> None:
    args = parse(
        "m.onnx",
        "--host",
        "0.0.0.0",
        "--port",
        "9000",
        "--workers",
        "3",
        "--max-batch",
        "16",
        "--max-body-bytes",
        "1000",
        "--max-wait-ms",
        "2.5",
        "--topk",
        "2",
        "--image-threads",
        "4",
    )
    assert (args.model, args.host, args.port, args.workers, args.max_batch) == ("m.onnx", "0.0.0.0", 9000, 3, 16)
    assert (args.max_body_bytes, args.max_wait_ms, args.topk, args.image_threads, args.func) == (1000, 2.5, 2, 4, run)
    defaults = parse("m.onnx")
    assert (defaults.host, defaults.port, defaults.workers, defaults.topk) == ("127.0.0.1", 8000, 1, None)
    assert defaults.image_threads is None


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--max-batch", "0"], "--max-batch must be >= 1"),
        (["--max-body-bytes", "0"], "--max-body-bytes must be >= 1"),
        (["--workers", "0"], "--workers"),
        (["--max-wait-ms", "-1"], "--max-wait-ms must be >= 0"),
        (["--topk", "0"], "--topk must be >= 1"),
        (["--image-threads", "0"], "--image-threads must be >= 1"),
        (["--header-timeout", "0"], "--header-timeout must be > 0"),
        (["--body-deadline", "nan"], "--body-deadline must be > 0"),
        (["--max-connections", "0"], "--max-connections must be >= 1"),
        (["--max-raw-values", "0"], "--max-raw-values must be >= 1"),
        (["--max-request-pixels", "0"], "--max-request-pixels must be >= 1"),
        (["--send-timeout", "0"], "--send-timeout must be > 0"),
        (["--keep-alive-timeout", "nan"], "--keep-alive-timeout must be > 0"),
        (["--max-buffered-bytes", "0"], "--max-buffered-bytes must be >= 1"),
        (
            ["--max-pixels-in-flight", "1000", "--max-image-pixels", "2000"],
            "--max-pixels-in-flight (1000) is below --max-image-pixels (2000)",
        ),
        (
            ["--max-body-bytes-in-flight", "1000", "--max-body-bytes", "2000"],
            "--max-body-bytes-in-flight (1000) is below --max-body-bytes (2000)",
        ),
        (["--max-connections", str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])], "open-file limit"),
        (["--graceful-timeout", "-1"], "--graceful-timeout must be >= 0"),
    ],
)
def test_bad_settings_exit_2_before_loading(tmp_path, capsys, flags, needle) -> None:
    # the model path does not exist: the settings must be refused first
    assert run(parse(str(tmp_path / "absent.onnx"), *flags)) == 2
    err = capsys.readouterr().err
    assert err.startswith("gainx serve: error:") and needle in err and "cannot load" not in err


def test_new_limit_flags() -> None:
    args = parse("m.onnx", "--send-timeout", "2.5", "--keep-alive-timeout", "1", "--max-buffered-bytes", "7")
    assert (args.send_timeout, args.keep_alive_timeout, args.max_buffered_bytes) == (2.5, 1.0, 7)
    args = parse("m.onnx", "--max-body-bytes-in-flight", "9", "--max-pixels-in-flight", "11")
    assert (args.max_body_bytes_in_flight, args.max_pixels_in_flight) == (9, 11)


# first versions fixed for the security advisories of each (see the comments in pyproject.toml)
SECURITY_FIXES = {"starlette": "1.3.1", "python-multipart": "0.0.31"}


@pytest.mark.parametrize("name", sorted(SECURITY_FIXES))
def test_serve_extra_requires_versions_with_the_security_fixes(name: str) -> None:
    """The lowest version the ``serve`` extra allows has the fixes (so does every later one)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads TOML")
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    requirement = next(r for r in map(Requirement, project["optional-dependencies"]["serve"]) if r.name == name)
    fixed = Version(SECURITY_FIXES[name])
    floors = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
    assert floors and min(floors) >= fixed, f"{requirement}: versions before {fixed} are allowed"


def test_listen_sets_up_a_tcp_socket() -> None:
    sock = listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.getsockname()[1] > 0
        with pytest.raises(OSError):
            listen("127.0.0.1", sock.getsockname()[1])  # the port is taken
    finally:
        sock.close()


@pytest.mark.parametrize("module", ["gainx.serve.app", "gainx.serve.cli", "gainx.runtime"])
def test_server_modules_import_without_torch(module: str) -> None:
    """The server and the ONNX runtime wrapper need no torch: importing them must not load it."""
    code = f"import sys, {module}; print('torch' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=REPO, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stdout + out.stderr


def test_lazy_package_names() -> None:
    code = (
        "import sys, gainx; assert 'torch' not in sys.modules; "
        "from gainx import GAIN, GAINOutput, attention_maps; print(GAIN.__module__, attention_maps.__module__)"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=REPO, check=False
    )
    assert out.returncode == 0 and out.stdout.split() == ["gainx.losses.gain", "gainx.attention.maps"], out.stderr


@pytest.mark.parametrize("port", ["-1", "65536", "70000"])
def test_a_port_out_of_range_is_refused_by_the_parser(port, capsys) -> None:
    with pytest.raises(SystemExit):
        parse("model.onnx", "--port", port)
    assert "a TCP port is 0-65535" in capsys.readouterr().err
