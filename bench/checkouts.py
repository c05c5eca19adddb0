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


def alternating(contenders: list, repeat: int):
    """``(repeat index, name, root)`` for ``repeat`` rounds of the
    ``(name, root)`` contenders, the order reversed every other round: a
    machine speeding up or slowing down over the runs (as these do) then
    favours neither side."""
    for i in range(repeat):
        for name, root in (contenders if i % 2 == 0 else contenders[::-1]):
            yield i, name, root
