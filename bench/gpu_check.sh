#!/usr/bin/env bash
# The GPU check in one command (build with CUDA, CUDA tests, kernel benchmarks, targets summary), run from the
# checkout's root; options and steps: bench/gpu_check.py (--dry-run prints them; --attention checks the
# attention-mining step alone: its CUDA tests, the fused backend's tile sweep, old vs new vs eager vs compile).
# PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m bench.gpu_check "$@"
