"""Checks shared by the offline tests of the deployment assets (deploy/)."""
import json
import os
import re
import subprocess
import sys

from apache_beam.options.pipeline_options import (PipelineOptions,
                                                  _BeamArgumentParser)

from topk import cli
from topk.pipelines import batch, stream
from topk.pipelines.options import check_required

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
FLINK_SH = os.path.join(REPO, "deploy", "flink", "flink.sh")


def flink_sh_default(name: str) -> str:
    """A version default of deploy/flink/flink.sh, e.g. ``TOPK_FLINK_VERSION``
    -> ``1.19.3``: the deployment assets must use the same versions."""
    text = open(FLINK_SH).read()
    m = re.search(r"\$\{" + name + r":-([^}]+)\}", text)
    assert m, name
    return m.group(1)


def beam_unknown_args(flags: list[str]) -> list[str]:
    """The ``flags`` that no pipeline option (Beam's or the project's) knows;
    a known flag with a bad value fails here too."""
    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    return parser.parse_known_args(flags)[1]


def check_topk_command(argv: list[str]):
    """Parse ``topk ARGV`` as the CLI would and check it without running it:
    the subcommand and its options exist and hold valid values, a pipeline's
    options are all known to Beam or the project and its required ones are
    there. Returns ``(args, PipelineOptions or None)``."""
    args, rest = cli.build_parser().parse_known_args(argv)
    if not getattr(args, "takes_beam_args", False):
        assert not rest, f"unknown arguments {rest}"
        return args, None
    if args.command == "batch":
        options = batch.parse_args(rest)
    else:
        assert args.command == "stream", args.command
        options = PipelineOptions(rest)
        check_required(options, ["bootstrap", "topic", "output"])
        assert options.view_as(stream.StreamOptions).topic
    assert beam_unknown_args(rest) == [], argv
    return args, options


def topk_calls(script: str, tmp_path) -> list[list[str]]:
    """Run a shell ``script`` (bash) with a stand-in ``topk`` first on PATH;
    returns the argv of every ``topk`` call, as the real one would get it."""
    bindir = tmp_path / "fake-bin"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / "topk-calls.jsonl"
    fake = bindir / "topk"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "with open(os.environ['TOPK_CALLS'], 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}",
               TOPK_CALLS=str(log))
    subprocess.run(["bash", "-c", script], env=env, check=True,
                   stdin=subprocess.DEVNULL, timeout=60)
    return [json.loads(line) for line in log.read_text().splitlines()]
