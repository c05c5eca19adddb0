"""What every ``topk`` command shares: one-line user errors, the help
layout, hints for renamed flags, and the result table."""
import argparse
import copy
import os
import textwrap
import unicodedata

#: Exit status of a user error (bad flag, bad value, missing input).
EXIT_USAGE = 2


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class HyphenatedHelpFormatter(argparse.HelpFormatter):
    """Shows each option by its hyphenated spelling only.

    Options that Beam ships to workers are declared twice, ``--item-shards``
    and ``--item_shards`` (see ``topk.pipelines.options``); help lists the
    first and the epilog says once that underscores are accepted.
    Descriptions are wrapped per paragraph; a paragraph of indented lines
    (examples) is kept as written."""

    def _fill_text(self, text, width, indent):
        paragraphs = []
        for para in text.split("\n\n"):
            lines = para.split("\n")
            if all(line.startswith("  ") for line in lines):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(textwrap.fill(
                    " ".join(para.split()), width, initial_indent=indent,
                    subsequent_indent=indent, break_on_hyphens=False,
                    break_long_words=False))
        return "\n\n".join(paragraphs)

    def _format_action_invocation(self, action):
        shown = [o for o in action.option_strings if "_" not in o]
        if shown and shown != action.option_strings:
            action = copy.copy(action)
            action.option_strings = shown
        return super()._format_action_invocation(action)


class CommandParser(argparse.ArgumentParser):
    """A command's parser: argument errors become one-line ``CliError``s,
    help hides underscore aliases."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HyphenatedHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise CliError(f"{self.prog}: {message} (see {self.prog} --help)")


def renamed_message(old: str, new: str) -> str:
    """The hint for a flag that was renamed (same words as
    ``topk.pipelines.options.reject_renamed``)."""
    return f"{old} is no longer an option: use {new}"


class _Renamed(argparse.Action):
    """A flag that was renamed: using it is an error naming the new one."""

    def __init__(self, option_strings, dest, new, **kwargs):
        super().__init__(option_strings, dest, nargs="?",
                         default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        raise CliError(renamed_message(option_string, self.new))


def add_renamed(parser: argparse.ArgumentParser,
                renamed: dict[str, str]) -> None:
    """Make each old flag of ``renamed`` (old -> new) exit 2 with a hint
    instead of a bare "unrecognized arguments"; hidden from help."""
    for old, new in renamed.items():
        parser.add_argument(old, action=_Renamed, new=new,
                            dest=f"renamed_{old.strip('-')}")


def printable(text: str) -> str:
    """``text`` with control and format characters escaped (``\\x1b``,
    ``\\n``, ``\\u202e``): item ids come from the events, and a terminal
    must show them, not obey them."""
    out = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else
                       f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def shorten(text: str, limit: int = 60) -> str:
    """``text`` escaped (``printable``) and cut in the middle to at most
    about ``limit`` characters: a user's value quoted in a one-line error."""
    text = printable(text)
    if len(text) <= limit:
        return text
    half = (limit - 3) // 2
    return f"{text[:half]}...{text[-half:]}"


def format_table(rows, approximate: bool = False) -> str:
    """Ranked rows as a fixed-width text table (item ids escaped)."""
    if not rows:
        return "(no events in range)"
    ids = [printable(r.item_id) for r in rows]
    width = max(len("item_id"), *(len(i) for i in ids))
    head = f"{'rank':>4}  {'item_id':<{width}}  {'count':>10}"
    if approximate:
        head += f"  {'lower':>10}  {'upper':>10}  guaranteed"
    lines = [head]
    for r, item_id in zip(rows, ids):
        line = f"{r.rank:>4}  {item_id:<{width}}  {r.count:>10}"
        if approximate:
            line += (f"  {r.lower_bound:>10}  {r.upper_bound:>10}  "
                     f"{'yes' if r.guaranteed else 'no'}")
        lines.append(line)
    return "\n".join(lines)


def make_parent(path: str) -> None:
    """Create the directory ``path`` will be written in."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0..65535 (0: a free one)."""
    if not text.strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(
            f"must be a TCP port 0..65535: {text[:20]!r}")
    return int(text)
