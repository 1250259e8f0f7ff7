"""Speed, memory and accuracy of our training + scorer against a seed-style reference and a softmax peer.

    python benchmarks/bench.py --data-dir ../shared/data/cifar10-images --minutes 10
    python benchmarks/bench.py --data-dir ... --minutes 3 --only ours softmax --holdout 4
    python benchmarks/bench.py --data-dir BASE --novel NOVEL --only ours softmax   (benchmarks/natural.py)

Each system runs in its own child process with the same wall-clock training budget (its peak
RSS is that child's, from wait4), one after the other, or all at once with --together (side by
side: each gets a share of the cores, and both see the same machine). Prints one JSON line per
system, then one comparing ours with the others. Run it on an otherwise idle machine.

--novel DIR (class folders, or an archive of them) adds the one-shot protocol on classes never
trained on: 600 seeded episodes each of 5-way 1-shot, 5-way 5-shot and 20-way 1-shot (15
queries per class), the same episodes for every system, scored by train.episodes as training
scores held-out classes: ours through its pair head, the peer by cosine to class means.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from episodes import novel_episodes   # benchmarks/, this script's folder: the peer scores the same

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ["ours", "reference", "softmax"]
KEYS = ["train_images_per_s", "train_pairs_per_s", "eval_pairs_per_s", "top1", "top5", "embedding_top1",
        "verification_accuracy", "roc_auc", "train_seconds", "peak_rss_mb"]   # first in a line, if it has them


def child(system, args):
    """Runs in the child process: train one system, print its numbers as JSON."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if system == "reference":
        # The seed's scripts ran on TensorFlow's own defaults: importing TensorFlow before our
        # package keeps them (the package turns oneDNN on; TensorFlow reads that at import).
        # TF_ENABLE_ONEDNN_OPTS=1 (or 0) in the environment sets both systems alike.
        import tensorflow  # noqa: F401
    sys.path.insert(0, str(ROOT))
    from siamese import data
    size = _parsed(args.ours).image_size   # the peer and the novel classes at ours' --image-size
    novel = data.load_classes(args.novel, size=size)[:2] if args.novel else None   # (x, y)
    if system == "reference":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import reference
        # The seed's way scores every (query, exemplar) pair through the whole network: all
        # training images as exemplars would take hours, so it keeps 10.
        result = reference.run(data.load(args.data_dir), args.minutes, 10 if args.shots == "all" else int(args.shots))
    elif system == "softmax":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import softmax_peer
        result = softmax_peer.run(data.load(args.data_dir, size=size), args.minutes,
                                  None if args.shots == "all" else int(args.shots), args.holdout, novel=novel,
                                  epochs=args.epochs,
                                  width=args.width, **peer_recipe(args.ours))
        result.update(holdout=args.holdout)
    else:
        import runpy
        from siamese import artifacts, evaluate, train
        parse_args = runpy.run_path(str(ROOT / "Cifar-100.py"))["parse_args"]
        with tempfile.TemporaryDirectory() as out:
            budget = ["--max-minutes", str(args.minutes)] if args.minutes else []
            budget += ["--epochs", str(args.epochs)] if args.epochs else []
            flags = ["--data-dir", args.data_dir, "--out", out, *budget,
                     "--shots", str(args.shots), "--no-plots", "--width", str(args.width), *_holdout_flag(args),
                     *args.ours]
            metrics = train.main(parse_args(flags))
            scorer = artifacts.load_scorer(out)   # the saved model, as users get it
        test = metrics["test"]
        # train.main times its own final evaluation, embedding included: every test image against
        # every class's prototype.
        eval_pairs = test["test_images"] * test["classes"]
        result = {k: metrics[k] for k in ("train_images_per_s", "train_pairs_per_s", "train_seconds",
                                          "eval_seconds")}
        result.update({k: test[k] for k in ("top1", "top5", "verification_accuracy", "roc_auc", "top1_exemplars",
                                            "learned_classes") if k in test})
        result.update(eval_pairs_per_s=eval_pairs / metrics["eval_seconds"],
                      epochs=len(metrics["history"]["loss"]), train_steps=metrics["train_steps"],
                      flags=" ".join([*_holdout_flag(args), *args.ours]))
        result.update({k: metrics[k] for k in ("few_shot", "open_set") if k in metrics})
        if novel:
            result.update(novel_episodes(scorer, novel))
    print("RESULT " + json.dumps(result), flush=True)


def _parsed(flags):
    """Cifar-100.py's arguments for ours' `flags`."""
    import runpy
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))   # Cifar-100.py imports the siamese package
    return runpy.run_path(str(ROOT / "Cifar-100.py"))["parse_args"](list(flags))


def peer_recipe(flags):
    """The softmax peer's share of ours' flags: the recipe, the flips and the branch's depth of
    Cifar-100.py run with `flags` (only the loss differs between the two; the image size is the
    data's, loaded alike; the width is bench.py's own flag, for both)."""
    from siamese import recipe
    parsed = _parsed(flags)
    return {"plan": recipe.from_args(parsed), "flip": parsed.flip, "depth": parsed.depth}


def _holdout_flag(args):
    return ["--holdout", args.holdout] if args.holdout else []


def start(system, args):
    cmd = [sys.executable, __file__, "--child", system, "--data-dir", args.data_dir,
           "--minutes", str(args.minutes or 0), *(["--epochs", str(args.epochs)] if args.epochs else []), "--width", str(args.width), "--shots", str(args.shots), *_holdout_flag(args),
           *(["--novel", args.novel] if args.novel else []), "--", *args.ours]
    # Its output goes to a file, not a pipe: side by side, a child blocked on a full pipe
    # nobody reads yet would stall its training.
    log = tempfile.TemporaryFile(mode="w+")
    return subprocess.Popen(cmd, stdout=log, text=True), log


def finish(system, proc, log):
    _, status, usage = os.wait4(proc.pid, 0)
    log.seek(0)
    out = log.read()
    lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
    if status != 0 or not lines:
        sys.stderr.write(out[-3000:])
        sys.exit(f"error: the {system} run failed (status {status}); see its output above")
    result = json.loads(lines[-1][7:])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024          # Linux: KiB
    return {"system": system, **{k: result.pop(k) for k in KEYS if k in result}, **result}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--minutes", type=float, default=None,
                   help="training budget per system (default: 10 without --epochs; 0: none)")
    p.add_argument("--epochs", type=int, help="train each system this many epochs (with --minutes: at most)")
    p.add_argument("--shots", default="all", help="exemplars per class for the closed-set top-1, or 'all' (default)")
    p.add_argument("--width", type=float, default=None,
                   help="--width of the branch, for ours and the softmax peer alike (default: Cifar-100.py's for ours' "
                   "flags: its recipe's)")
    p.add_argument("--only", nargs="+", choices=SYSTEMS, help="run only these systems")
    p.add_argument("--holdout", help="classes ours and the softmax peer never train on (a number N or "
                   "'fc100', as Cifar-100.py --holdout; seed 0); both then report few-shot accuracy on "
                   "them. The reference trains on all classes")
    p.add_argument("--novel", help="class folders (or an archive) of classes never trained on: one-shot episodes")
    p.add_argument("--together", action="store_true", help="run the systems at the same time, side by side")
    p.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("ours", nargs="*", help="extra Cifar-100.py flags for our run, after --")
    args = p.parse_args(argv)
    if args.minutes is None:
        args.minutes = 0.0 if args.epochs else 10.0
    if args.width is None:
        args.width = _parsed(args.ours).width   # the recipe's (photos: 1; --recipe characters: 0.5)
    if args.holdout and args.holdout != "fc100" and not (args.holdout.isdigit() and int(args.holdout) > 0):
        p.error(f"--holdout must be 'fc100' or a positive number of classes, got {args.holdout!r}")
    if args.child:
        return child(args.child, args)
    results = {}
    systems = [s for s in SYSTEMS if s in (args.only or SYSTEMS)]
    running = {s: start(s, args) for s in systems} if args.together else {}
    for system in systems:
        results[system] = finish(system, *(running.get(system) or start(system, args)))
        print(json.dumps({"data": args.data_dir, "budget_minutes": args.minutes, "epochs_cap": args.epochs, "together": args.together,
                          **results[system]}), flush=True)
    if "ours" in results and len(results) > 1:
        print(json.dumps(ratios(results)))


def ratios(results):
    """Ours against the others: ratios to the reference, top-1 points against both."""
    o, line = results["ours"], {}
    if "reference" in results:
        r = results["reference"]
        line.update({"ratios": "ours / reference",
                     "train_pairs_per_s": o["train_pairs_per_s"] / r["train_pairs_per_s"],
                     "eval_pairs_per_s": o["eval_pairs_per_s"] / r["eval_pairs_per_s"],
                     "peak_rss": o["peak_rss_mb"] / r["peak_rss_mb"],
                     "top1_points": 100 * (o["top1"] - r["top1"])})
    if "softmax" in results:
        # ours' exemplar top-1 against the peer's closed-set top-1 (its softmax), same classes
        line["top1_points_vs_softmax"] = 100 * (o["top1"] - results["softmax"]["top1"])
        if "novel" in o:
            line["novel_points_vs_softmax"] = {k: 100 * (r["mean"] - results["softmax"]["novel"][k]["mean"])
                                               for k, r in o["novel"].items()}
    return line


if __name__ == "__main__":
    main()
