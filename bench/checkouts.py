"""Timing one checkout's code beside another's: a benchmark script runs
itself as a child (``--child ROOT SPEC``) with ``ROOT`` first on
``sys.path``, so each contender imports its own ``topk`` package."""
import json
import subprocess
import sys


def run_child(script: str, root: str, spec: dict) -> dict:
    """``script --child root spec`` in a fresh interpreter; the JSON it
    prints."""
    proc = subprocess.run(
        [sys.executable, script, "--child", root, json.dumps(spec)],
        capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"the run under {root} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)
