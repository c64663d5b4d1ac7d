"""Run ``python -m gainx.serve`` as a child process and wait until it serves.

For integration tests and benchmarks of a deployment (gainx's own tests and
``bench/`` use it): ``with ServerProcess("model.onnx", "server.log") as server:
...`` gives a server on a free loopback port, stopped on exit.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import gainx

_READY = re.compile(r"ready on (http://[\d.]+:(\d+))")
REPO = Path(gainx.__file__).resolve().parents[1]
# `python -m gainx.serve ARGS` with a lower soft open-file limit
_LIMITED = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
sys.argv[0] = "gainx.serve"
runpy.run_module("gainx.serve", run_name="__main__", alter_sys=True)
"""


class ServerProcess:
    """A server on a free loopback port (``--port 0``); its output goes to ``log``, never to a pipe.

    The child runs the gainx this process imported: ``PYTHONPATH`` points at
    it and the working directory is the log's folder, so a checkout in the
    current directory cannot shadow an installed package.

    ``file_limit`` lowers the child's soft open-file limit (``ulimit -n``),
    e.g. to test how it copes when connections exhaust it. ``env`` adds
    environment variables for the child (e.g. ``MALLOC_ARENA_MAX``).

    Attributes: ``url``, ``port``, ``proc`` (the :class:`subprocess.Popen`).
    """

    def __init__(
        self,
        model: str | Path,
        log: str | Path,
        *flags: str,
        start_timeout: float = 120.0,
        file_limit: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.log = Path(log)
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, **(env or {}), "PYTHONPATH": path}
        args = [str(model), "--host", "127.0.0.1", "--port", "0", *flags]
        command = [sys.executable, "-m", "gainx.serve", *args]
        if file_limit is not None:  # set in the child itself (preexec_fn is unsafe in a threaded parent)
            command = [sys.executable, "-c", _LIMITED.format(limit=int(file_limit)), *args]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.log.parent)
        deadline = time.monotonic() + start_timeout
        while (match := _READY.search(self.output())) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"gainx serve did not start (exit {self.proc.returncode}):\n{self.output()}")
            time.sleep(0.05)
        self.url, self.port = match[1], int(match[2])

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful: in-flight requests finish), then the exit status; SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
