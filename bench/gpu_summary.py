"""The GPU check's summary: machine and library versions, step outcomes, CUDA test counts, targets.

Written next to the benchmark results as ``gpu_check.md`` (for people) and
``gpu_check.json`` (the same, for programs).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.targets import Result
from gainx.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
_EXTENSION_PROBE = (
    "import torch; from gainx.ops import extension; "
    "print(extension.load() is not None and torch.cuda.is_available() and extension.supports(torch.device('cuda')))"
)


@dataclass
class StepOutcome:
    name: str
    status: str  # "ok", "failed (exit N)", "timed out after N s", "skipped: why"
    seconds: float
    log: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except (ImportError, AttributeError, RuntimeError, OSError) as err:  # reported, not fatal
        return f"unavailable ({type(err).__name__})"


def _driver_version() -> str:
    """The NVIDIA driver version as nvidia-smi reports it (torch does not expose it)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "unknown (nvidia-smi not found)"
    query = [smi, "--query-gpu=driver_version", "--format=csv,noheader"]
    res = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
    if res.returncode != 0 or not res.stdout.strip():
        return f"unknown (nvidia-smi exited with {res.returncode})"
    return res.stdout.strip().splitlines()[0]


def _extension_has_cuda() -> str:
    """Whether the checkout's gainx._C loads with CUDA kernels, asked in a fresh process (after the build)."""
    res = subprocess.run(
        [sys.executable, "-c", _EXTENSION_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
        return f"no (the probe failed: {last})"
    return "yes" if res.stdout.strip() == "True" else "no"


def collect_environment() -> dict[str, str]:
    """GPU, driver and library versions of this machine."""
    import torch

    cuda = torch.cuda.is_available()
    try:
        import onnxruntime as ort

        onnxruntime = f"{ort.__version__} ({', '.join(ort.get_available_providers())})"
    except (ImportError, RuntimeError, OSError) as err:
        onnxruntime = f"unavailable ({type(err).__name__})"
    return {
        "gpu": torch.cuda.get_device_name(0) if cuda else "none",
        "driver": _driver_version() if cuda else "none",
        "torch": torch.__version__,
        "cuda (torch build)": str(torch.version.cuda),
        "cudnn": str(torch.backends.cudnn.version()) if cuda else "none",
        "triton": _version("triton"),
        "onnxruntime": onnxruntime,
        "python": sys.version.split()[0],
        "gainx._C CUDA kernels": _extension_has_cuda(),
    }


def junit_counts(junit_xml: Path) -> dict[str, object]:
    """passed / failed / errors / skipped counts and the failing test ids from a pytest ``--junitxml`` file."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
    if not junit_xml.exists():
        return {**counts, "note": f"no {junit_xml.name}"}
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), None)
        key = {"failure": "failed", "error": "errors", "skipped": "skipped", None: "passed"}[outcome]
        counts[key] += 1
        if outcome in ("failure", "error"):
            counts["failures"].append(f"{case.get('classname')}::{case.get('name')}")
    return counts


def render_markdown(
    command: str, environment: dict[str, str], steps: list[StepOutcome], tests: dict[str, object], results: list[Result]
) -> str:
    lines = [
        f"# GPU check on {environment['gpu']}",
        "",
        f"`{command}`",
        "",
        "## Environment",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in environment.items()),
        "",
        "## Steps",
        "",
        "| step | status | seconds | log |",
        "|---|---|---|---|",
        *(f"| {s.name} | {s.status} | {s.seconds:.0f} | {s.log} |" for s in steps),
        "",
        "## CUDA tests (`pytest -m cuda`)",
        "",
        f"passed {tests['passed']}, failed {tests['failed']}, errors {tests['errors']}, "
        f"skipped {tests['skipped']}" + (f" ({tests['note']})" if tests.get("note") else ""),
        "",
    ]
    lines += [f"- {name}" for name in tests["failures"]]
    lines += ["", "## Targets", "", "| target | group | measured | target | result |", "|---|---|---|---|---|"]
    lines += [
        f"| {r.target.name} | {r.target.group} | {r.value_text} | {r.target.bound_text} | {r.met_text} |"
        for r in results
    ]
    return "\n".join(lines) + "\n"


def write_summary(
    folder: Path,
    command: str,
    environment: dict[str, str],
    steps: list[StepOutcome],
    tests: dict[str, object],
    results: list[Result],
) -> Path:
    """Write ``gpu_check.md`` and ``gpu_check.json`` into ``folder`` (atomically); returns the markdown path."""
    data = {
        "command": command,
        "environment": environment,
        "steps": [asdict(s) for s in steps],
        "tests": tests,
        "targets": [
            {
                "name": r.target.name,
                "group": r.target.group,
                "member": r.target.member,
                "reference": r.target.reference,
                "bound": r.target.bound_text,
                "value": r.value,
                "met": r.met,
                "note": r.note,
            }
            for r in results
        ],
    }
    atomic_write_text(folder / "gpu_check.json", json.dumps(data, indent=1))
    markdown = render_markdown(command, environment, steps, tests, results)
    atomic_write_text(folder / "gpu_check.md", markdown)
    return folder / "gpu_check.md"
