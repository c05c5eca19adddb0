"""Accuracy of the approximate top-K methods against exact counts.

    python bench/accuracy_report.py            # full: 10M events per stream
    python bench/accuracy_report.py --quick    # small run, ~20 s

Streams (each over ``--items`` distinct items, default 1M, ``--events``
events, default 10M, in time order): Zipf exponents 0.8, 1.0 and 1.2, and
Zipf 1.0 with a sudden hot-item burst (a cold item takes 20% of the events
in 5% of the stream, ending near rank 5). Events are cut into batches of
``--batch`` events (default 100k, one "slice") and each batch is
pre-aggregated exactly with NumPy, as the pipeline's exact stage does; the
sketches are fed those (item, count) pairs. Two ways of building a window:

- ``stream``: one sketch per window, updated with every batch (the stream
  pipeline's accumulator);
- ``merged``: one sketch per slice, then all slice sketches merged (a range
  query over per-slice sketches).

For every method (exact, cms, frequent_items) and budget (4 to 256 KiB) it
reports precision@K and recall@K for K = 10 and 100 (precision: the share
of the K slots holding an item whose true count reaches the true K-th count,
so ties at the cut are not errors; recall: the share of the true top-K,
ranked count desc then id asc, that was reported),
mean and max relative count error over the true top-K (the count the sketch
reports for the item, or the midpoint of its bounds if it does not track
it), the share of true counts inside the reported bounds (over the reported
top-100 and the true top-100), the top-100 items flagged guaranteed (and
asserts that no flag is wrong), whether the documented error guarantee
held, and bytes used. It writes ``bench/results/accuracy.md`` (a Markdown
table) and ``bench/results/accuracy.png`` (error against memory, one line
per method), or ``*-quick.*`` with ``--quick``.
"""
import argparse
import dataclasses
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from topk.loadgen import generator  # noqa: E402
from topk.approx import sketches

BUDGETS_KIB = (4, 8, 16, 32, 64, 128, 256)
QUICK_BUDGETS_KIB = (4, 16, 64, 256)
KS = (10, 100)
METHODS = ("cms", "frequent_items")
MODES = ("stream", "merged")
#: The issue's targets, checked at 64 KiB on these streams.
TARGET_BUDGET_KIB = 64
TARGET_STREAMS = ("zipf-1.0", "zipf-1.2")
TARGET_PRECISION = 0.99


@dataclasses.dataclass
class Stream:
    name: str
    #: Per batch: (item ids, counts), pre-aggregated, in time order.
    batches: list
    #: Exact count of every item (index = item number).
    exact: np.ndarray
    catalogue: pa.Array
    events: int

    @property
    def pairs(self) -> int:
        return sum(len(c) for _, c in self.batches)


def make_stream(name: str, zipf: float, items: int, events: int, batch: int,
                seed: int, burst: bool = False) -> Stream:
    """Sample item numbers by inverse CDF (as topk.loadgen.generator does), cut
    into batches and pre-aggregate each batch with a bincount."""
    rng = np.random.default_rng([seed, int(zipf * 100), int(burst)])
    cdf = np.cumsum(generator.zipf_probabilities(items, zipf))
    drawn = np.minimum(np.searchsorted(cdf, rng.random(events), side="right"),
                       items - 1).astype(np.int64)
    if burst:
        # A cold item becomes hot for 5% of the stream: 20% of the events
        # in that stretch (like GeneratorConfig.burst_*), ~1% overall.
        lo, hi = int(events * 0.475), int(events * 0.525)
        hit = rng.random(hi - lo) < 0.2
        drawn[lo:hi][hit] = items // 2
    catalogue = generator.item_catalogue(items)
    out = []
    for start in range(0, events, batch):
        c = np.bincount(drawn[start:start + batch], minlength=items)
        idx = np.flatnonzero(c)
        out.append((catalogue.take(pa.array(idx)), c[idx]))
    return Stream(name, out, np.bincount(drawn, minlength=items), catalogue,
                  events)


def true_order(exact: np.ndarray) -> np.ndarray:
    """Item numbers by count desc, then id asc (ids sort like numbers)."""
    nz = np.flatnonzero(exact)
    return nz[np.lexsort((nz, -exact[nz]))]


def item_number(ids) -> np.ndarray:
    return np.array([int(s[5:]) for s in ids], dtype=np.int64)


def build(method: str, budget: int, stream: Stream, mode: str):
    """Returns (sketch, seconds spent in update, seconds spent merging)."""
    t_update = t_merge = 0.0
    if mode == "stream":
        sketch = sketches.new_sketch(method, budget)
        for items, counts in stream.batches:
            t0 = time.perf_counter()
            sketch.update(items, counts, assume_unique=True)
            t_update += time.perf_counter() - t0
        return sketch, t_update, t_merge
    parts = []
    for items, counts in stream.batches:
        s = sketches.new_sketch(method, budget)
        t0 = time.perf_counter()
        s.update(items, counts, assume_unique=True)
        t_update += time.perf_counter() - t0
        # Through bytes, as the query layer reads them from the table.
        parts.append(s.to_bytes())
    t0 = time.perf_counter()
    sketch = sketches.merge_all(parts)
    t_merge = time.perf_counter() - t0
    return sketch, t_update, t_merge


def evaluate(sketch, stream: Stream, order: np.ndarray) -> dict:
    exact = stream.exact
    n = stream.events
    tracked = sketch.top_k(1 << 30)  # everything the sketch tracks
    t_num = item_number(tracked["item_id"].to_pylist())
    t_cnt = tracked["count"].to_numpy()
    t_lo = tracked["lower_bound"].to_numpy()
    t_hi = tracked["upper_bound"].to_numpy()
    assert (t_lo <= exact[t_num]).all() and (exact[t_num] <= t_hi).all(), (
        "a reported bound does not contain the true count")
    row = {"bytes": sketch.nbytes, "budget": sketch.budget_bytes}
    for k in KS:
        top = sketch.top_k(k)
        r_num = item_number(top["item_id"].to_pylist())
        kth = exact[order[k - 1]]
        true_top = order[:k]
        # Over k slots: a sketch that tracks fewer than k items is charged
        # for the empty ones.
        row[f"p@{k}"] = float((exact[r_num] >= kth).sum() / k)
        row[f"r@{k}"] = float(np.isin(true_top, r_num).mean())
        # Flags: never wrong (at most k-1 others reach the item's count).
        sorted_counts = np.sort(exact)
        for num, flag in zip(r_num, top["guaranteed"].to_pylist()):
            if flag:
                at_least = len(exact) - np.searchsorted(
                    sorted_counts, exact[num], side="left") - 1
                assert at_least <= k - 1, "a guaranteed flag is wrong"
        row[f"g@{k}"] = int(np.sum(top["guaranteed"].to_numpy(
            zero_copy_only=False)))
        # Relative error of the sketch's count for each true top-k item.
        est = np.empty(k)
        pos = {int(x): i for i, x in enumerate(t_num)}
        missing = [j for j, x in enumerate(true_top) if int(x) not in pos]
        for j, x in enumerate(true_top):
            if int(x) in pos:
                est[j] = t_cnt[pos[int(x)]]
        if missing:
            ids = stream.catalogue.take(pa.array(true_top[missing]))
            lo, hi = sketch.bounds(ids)
            est[missing] = (lo + hi) / 2
        rel = np.abs(est - exact[true_top]) / exact[true_top]
        row[f"mean_err@{k}"] = float(rel.mean())
        row[f"max_err@{k}"] = float(rel.max())
    # Bounds coverage over the reported top-100 and the true top-100.
    k = KS[-1]
    ids = pa.concat_arrays([
        sketch.top_k(k)["item_id"].combine_chunks(),
        stream.catalogue.take(pa.array(order[:k]))])
    lo, hi = sketch.bounds(ids)
    truth = exact[item_number(ids.to_pylist())]
    row["in_bounds"] = float(((lo <= truth) & (truth <= hi)).mean())
    # The documented error guarantee of each method.
    if sketch.method == "frequent_items":
        # Deterministic per sketch (DataSketches): offset <= epsilon * N.
        row["guarantee"] = bool(sketch.max_error <= sketch.epsilon * n)
        row["guarantee_note"] = (f"max_error {sketch.max_error} <= "
                                 f"eps*N {sketch.epsilon * n:.0f}")
    else:
        # Count-Min: each estimate within epsilon*N w.p. 1 - delta. Checked
        # on every reported item's upper bound.
        over = (hi - truth) <= sketch.epsilon * n
        row["guarantee"] = bool(over.all())
        row["guarantee_note"] = (f"{over.mean():.0%} of upper bounds within "
                                 f"eps*N {sketch.epsilon * n:.0f}")
    return row


def exact_row(stream: Stream) -> dict:
    nz = np.flatnonzero(stream.exact)
    table = pa.table({"item_id": stream.catalogue.take(pa.array(nz)),
                      "count": stream.exact[nz]})
    row = {"bytes": table.nbytes, "budget": None, "in_bounds": 1.0,
           "guarantee": True, "guarantee_note": "exact"}
    for k in KS:
        row.update({f"p@{k}": 1.0, f"r@{k}": 1.0, f"g@{k}": k,
                    f"mean_err@{k}": 0.0, f"max_err@{k}": 0.0})
    return row


def run(args) -> list[dict]:
    specs = [("zipf-0.8", 0.8, False), ("zipf-1.0", 1.0, False),
             ("zipf-1.2", 1.2, False), ("burst", 1.0, True)]
    budgets = args.budgets
    rows = []
    for name, s, burst in specs:
        t0 = time.perf_counter()
        stream = make_stream(name, s, args.items, args.events, args.batch,
                             args.seed, burst)
        order = true_order(stream.exact)
        print(f"# {name}: {stream.events:,} events, {args.items:,} items, "
              f"{len(stream.batches)} batches, {stream.pairs:,} pairs "
              f"(generated in {time.perf_counter() - t0:.1f} s)", flush=True)
        rows.append(dict(stream=name, mode="-", method="exact",
                         budget_kib=None, pairs=stream.pairs,
                         **exact_row(stream)))
        for mode in MODES:
            for method in METHODS:
                for kib in budgets:
                    sketch, t_up, t_merge = build(method, kib * 1024, stream,
                                                  mode)
                    row = dict(stream=name, mode=mode, method=method,
                               budget_kib=kib, pairs=stream.pairs,
                               update_s=t_up, merge_s=t_merge,
                               **evaluate(sketch, stream, order))
                    rows.append(row)
                    print(format_line(row), flush=True)
    return rows


def format_line(r: dict) -> str:
    speed = (f" {r['pairs'] / r['update_s'] / 1e6:5.1f}M pairs/s"
             if r.get("update_s") else "")
    return (f"{r['stream']:9s} {r['mode']:7s} {r['method']:15s} "
            f"{str(r['budget_kib'] or '-'):>4s} KiB  {r['bytes']:>9,d} B  "
            f"P@10 {r['p@10']:.2f} R@10 {r['r@10']:.2f}  "
            f"P@100 {r['p@100']:.2f} R@100 {r['r@100']:.2f}  "
            f"err@100 mean {r['mean_err@100']:.4f} max {r['max_err@100']:.4f}"
            f"  in-bounds {r['in_bounds']:.0%}  guar@100 {r['g@100']:3d}  "
            f"guarantee {'ok' if r['guarantee'] else 'VIOLATED'}{speed}")


def markdown(rows: list[dict], args, speeds: dict) -> str:
    head = ("| stream | mode | method | budget KiB | bytes used | P@10 | R@10 "
            "| P@100 | R@100 | mean rel err @10 | max rel err @10 "
            "| mean rel err @100 | max rel err @100 | true counts in bounds "
            "| top-100 guaranteed | error guarantee |")
    lines = [
        "# Approximate top-K accuracy",
        "",
        f"Generated by `{args.command}` (seed {args.seed}). "
        f"{args.events:,} events per stream over {args.items:,} items, "
        f"batches of {args.batch:,} events pre-aggregated exactly; "
        "`stream` = one sketch updated per batch, `merged` = one sketch per "
        "batch (slice), all merged (a range query). Precision@K is the share "
        "of the K slots holding an item whose true count reaches the true "
        "K-th count (tie-aware; empty slots count as misses); "
        "relative errors are over the true top-K; bounds coverage is over "
        "the reported and the true top-100; `error guarantee` is each "
        "method's documented bound (frequent_items: max_error <= eps*N, "
        "deterministic; cms: upper bound - true <= eps*N, which Count-Min "
        "promises with probability 1-delta per item). Exact `bytes used` is "
        "the Arrow size of the full count table.",
        "",
        head,
        "|" + "|".join(["---"] * (head.count("|") - 1)) + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stream']} | {r['mode']} | {r['method']} | "
            f"{r['budget_kib'] or '-'} | {r['bytes']:,} | {r['p@10']:.2f} | "
            f"{r['r@10']:.2f} | {r['p@100']:.2f} | {r['r@100']:.2f} | "
            f"{r['mean_err@10']:.4f} | {r['max_err@10']:.4f} | "
            f"{r['mean_err@100']:.4f} | {r['max_err@100']:.4f} | "
            f"{r['in_bounds']:.0%} | {r['g@100']} | "
            f"{'holds' if r['guarantee'] else 'VIOLATED'} "
            f"({r['guarantee_note']}) |")
    lines += ["", "## Update speed (pre-aggregated pairs, one core)", "",
              "| method | mode | pairs/s (median over budgets and streams) "
              "| events/s equivalent |", "|---|---|---|---|"]
    for (method, mode), (pps, eps_) in speeds.items():
        lines.append(f"| {method} | {mode} | {pps / 1e6:.1f}M | "
                     f"{eps_ / 1e6:.1f}M |")
    lines += ["", "## Targets", ""] + targets(rows) + [""]
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        if (r["budget_kib"] == TARGET_BUDGET_KIB
                and r["stream"] in TARGET_STREAMS):
            ok_p = r["method"] != "frequent_items" or (
                r["p@100"] >= TARGET_PRECISION)
            ok = ok_p and r["in_bounds"] == 1.0 and r["guarantee"]
            out.append(
                f"- {'met' if ok else 'MISSED'}: {r['stream']} {r['mode']} "
                f"{r['method']} at {TARGET_BUDGET_KIB} KiB: P@100 "
                f"{r['p@100']:.2f}, {r['in_bounds']:.0%} in bounds, "
                f"guarantee {'holds' if r['guarantee'] else 'VIOLATED'}")
    return out


def speed_summary(rows: list[dict]) -> dict:
    out = {}
    for method in METHODS:
        for mode in MODES:
            sel = [r for r in rows if r["method"] == method
                   and r["mode"] == mode and r.get("update_s")]
            if sel:
                out[(method, mode)] = (
                    float(np.median([r["pairs"] / r["update_s"]
                                     for r in sel])),
                    float(np.median([r["pairs"] / r["update_s"]
                                     * (r["events"] / r["pairs"])
                                     for r in sel])))
    return out


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    streams = list(dict.fromkeys(r["stream"] for r in rows))
    fig, axes = plt.subplots(2, len(streams), figsize=(4.2 * len(streams), 7),
                             sharex=True, squeeze=False)
    colours = {"cms": "tab:blue", "frequent_items": "tab:orange"}
    styles = {"stream": "-", "merged": "--"}
    for col, name in enumerate(streams):
        for method in METHODS:
            for mode in MODES:
                sel = sorted((r for r in rows if r["stream"] == name
                              and r["method"] == method and r["mode"] == mode),
                             key=lambda r: r["budget_kib"])
                if not sel:
                    continue
                x = [r["budget_kib"] for r in sel]
                label = f"{method} ({mode})"
                axes[0][col].plot(
                    x, [max(r["mean_err@100"], 1e-5) for r in sel],
                    styles[mode], color=colours[method], marker="o", ms=3,
                    label=label)
                axes[1][col].plot(x, [r["p@100"] for r in sel], styles[mode],
                                  color=colours[method], marker="o", ms=3,
                                  label=label)
        # Exact: no error, precision 1 (for reference).
        axes[0][col].axhline(1e-5, color="grey", ls=":", label="exact")
        axes[1][col].axhline(1.0, color="grey", ls=":", label="exact")
        axes[0][col].set_title(name)
        axes[0][col].set_yscale("log")
        axes[1][col].set_ylim(0, 1.02)
        axes[1][col].set_xscale("log", base=2)
        axes[1][col].set_xlabel("memory budget per window (KiB)")
        for ax in (axes[0][col], axes[1][col]):
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("mean relative count error, true top-100\n"
                          "(0 drawn at 1e-5)")
    axes[1][0].set_ylabel("precision@100")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Approximate top-K: error against memory "
                 "(exact = 0 error, precision 1)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small run: 100k items, 1M events, 4 budgets")
    p.add_argument("--items", type=int)
    p.add_argument("--events", type=int)
    p.add_argument("--batch", type=int, default=100_000)
    p.add_argument("--budgets", type=lambda s: tuple(
        int(x) for x in s.split(",")), help="KiB, comma-separated")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    args.items = args.items or (100_000 if args.quick else 1_000_000)
    args.events = args.events or (1_000_000 if args.quick else 10_000_000)
    args.budgets = args.budgets or (QUICK_BUDGETS_KIB if args.quick
                                    else BUDGETS_KIB)
    args.command = "python bench/accuracy_report.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    args.command = args.command.strip()
    print(f"$ {args.command}", flush=True)
    t0 = time.perf_counter()
    rows = run(args)
    for r in rows:
        r["events"] = args.events
    speeds = speed_summary(rows)
    os.makedirs(args.out, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    md_path = os.path.join(args.out, f"accuracy{suffix}.md")
    png_path = os.path.join(args.out, f"accuracy{suffix}.png")
    with open(md_path, "w") as f:
        f.write(markdown(rows, args, speeds))
    plot([r for r in rows if r["method"] != "exact"], png_path)
    print()
    for (method, mode), (pps, eps_) in speeds.items():
        print(f"speed {method:15s} {mode:7s} {pps / 1e6:5.1f}M pairs/s "
              f"(= {eps_ / 1e6:.1f}M events/s)")
    print("\n".join(targets(rows)))
    print(f"wrote {md_path} and {png_path} in "
          f"{time.perf_counter() - t0:.0f} s")
    return 0 if all(r["guarantee"] and r["in_bounds"] == 1.0
                    for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
