"""Accuracy against training minutes: ours and the softmax peer, the old branch and the new.

    python benchmarks/minutes.py                       # docs/minutes.jsonl -> docs/minutes.png
    python benchmarks/natural.py --minutes 5 --together | python benchmarks/minutes.py --add "width 0.5"

Reads the JSON lines benchmarks/bench.py prints (one per system and run; `--add LABEL` appends
stdin's lines to the record, tagged with the branch they trained) and draws 100-way top-1 on the
base test images and 5-way 1-shot on the novel classes against the budget, one line per (branch,
system), each point the mean of that budget's runs, every run drawn as a dot.
"""
import argparse
import collections
import json
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
RECORD, FIGURE = DOCS / "minutes.jsonl", DOCS / "minutes.png"
PANELS = [("top1", "100-way top-1 on the base test images (%)"),
          ("5-way-1-shot", "new classes, 5-way 1-shot (%)")]


def value(line, key):
    return line["top1"] if key == "top1" else line["novel"][key]["mean"]


def add(label, text, record=RECORD):
    """The result lines of a bench.py run (its comparison line dropped), tagged with `label`."""
    lines = [dict(json.loads(l), branch=label) for l in text.splitlines() if l.startswith("{")]
    lines = [l for l in lines if "system" in l and "novel" in l]
    with open(record, "a") as f:
        f.writelines(json.dumps(l) + "\n" for l in lines)
    return lines


def draw(record=RECORD, figure=FIGURE):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = [json.loads(l) for l in open(record) if l.strip()]
    series = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in runs:
        series[(r["branch"], r["system"])][r["budget_minutes"]].append(r)
    from matplotlib.ticker import NullFormatter
    fig, axes = plt.subplots(1, len(PANELS), figsize=(10, 5))
    colours = {b: f"C{i}" for i, b in enumerate(sorted({b for b, _ in series}, key=lambda b: "old" not in b))}
    for (branch, system), by_minutes in sorted(series.items()):
        minutes = sorted(by_minutes)
        style = dict(linestyle="-" if system == "ours" else "--", marker="o" if system == "ours" else "s",
                     color=colours[branch], alpha=1 if system == "ours" else 0.6,
                     label=f"{'ours (Siamese)' if system == 'ours' else 'softmax peer'}, {branch}")
        for ax, (key, _) in zip(axes, PANELS):
            means = [100 * sum(value(r, key) for r in by_minutes[m]) / len(by_minutes[m]) for m in minutes]
            line, = ax.plot(minutes, means, **style)
            for m in minutes:
                ax.scatter([m] * len(by_minutes[m]), [100 * value(r, key) for r in by_minutes[m]],
                           s=10, color=line.get_color())
    for ax, (_, title) in zip(axes, PANELS):
        ax.set(title=title, xlabel="training minutes (2-core CPU, side by side)")
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["budget_minutes"] for r in runs}), [f"{m:g}" for m in
                                                                    sorted({r["budget_minutes"] for r in runs})])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
    # Below the panels, not on them: with a line per (branch, system) a legend inside hides the points.
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=2)
    fig.tight_layout(rect=(0, 0.03 + 0.033 * ((len(series) + 1) // 2), 1, 1))
    fig.savefig(figure, dpi=110)
    return figure


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--add", metavar="LABEL", help="append bench.py's JSON lines from stdin, tagged LABEL")
    args = p.parse_args(argv)
    if args.add:
        print(f"added {len(add(args.add, sys.stdin.read()))} runs to {RECORD}")
    print(f"wrote {draw()}")


if __name__ == "__main__":
    main()
