"""Speed, memory and accuracy of our training + scorer against a seed-style reference.

    python benchmarks/bench.py --data-dir ../shared/data/cifar10-images --minutes 10

Each system runs in its own child process with the same wall-clock training budget (its peak
RSS is that child's, from wait4). Prints one JSON line per system, then one with the ratios
ours / reference. Run it on an idle machine: both share the same 2 cores otherwise.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["train_images_per_s", "train_pairs_per_s", "eval_pairs_per_s", "top1", "top5",
        "verification_accuracy", "roc_auc", "train_seconds", "peak_rss_mb"]


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
    if system == "reference":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import reference
        result = reference.run(data.load(args.data_dir), args.minutes, args.shots)
    else:
        import runpy
        from siamese import train
        parse_args = runpy.run_path(str(ROOT / "Cifar-100.py"))["parse_args"]
        with tempfile.TemporaryDirectory() as out:
            flags = ["--data-dir", args.data_dir, "--out", out, "--max-minutes", str(args.minutes),
                     "--shots", str(args.shots), "--no-plots", *args.ours]
            metrics = train.main(parse_args(flags))
        test = metrics["test"]
        # train.main times its own final evaluation: every test image against every exemplar
        # (shots of each class, checked against the smallest class), embedding included.
        eval_pairs = test["test_images"] * test["classes"] * metrics["shots"]
        result = {k: metrics[k] for k in ("train_images_per_s", "train_pairs_per_s", "train_seconds",
                                          "eval_seconds")}
        result.update({k: test[k] for k in ("top1", "top5", "verification_accuracy", "roc_auc")})
        result.update(eval_pairs_per_s=eval_pairs / metrics["eval_seconds"],
                      epochs=len(metrics["history"]["loss"]), flags=" ".join(args.ours))
    print("RESULT " + json.dumps(result), flush=True)


def measure(system, args):
    cmd = [sys.executable, __file__, "--child", system, "--data-dir", args.data_dir,
           "--minutes", str(args.minutes), "--shots", str(args.shots), "--", *args.ours]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
    if status != 0 or not lines:
        sys.exit(f"error: the {system} run failed (status {status}); see its output above")
    result = json.loads(lines[-1][7:])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024          # Linux: KiB
    return {"system": system, **{k: result.pop(k) for k in KEYS}, **result}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per system (default: 10)")
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--only", choices=["ours", "reference"], help="run one system only")
    p.add_argument("--child", choices=["ours", "reference"], help=argparse.SUPPRESS)
    p.add_argument("ours", nargs="*", help="extra Cifar-100.py flags for our run, after --")
    args = p.parse_args()
    if args.child:
        return child(args.child, args)
    results = {}
    for system in ["ours", "reference"] if not args.only else [args.only]:
        results[system] = measure(system, args)
        print(json.dumps({"data": args.data_dir, "budget_minutes": args.minutes, **results[system]}), flush=True)
    if len(results) == 2:
        o, r = results["ours"], results["reference"]
        print(json.dumps({"ratios": "ours / reference",
                          "train_pairs_per_s": o["train_pairs_per_s"] / r["train_pairs_per_s"],
                          "eval_pairs_per_s": o["eval_pairs_per_s"] / r["eval_pairs_per_s"],
                          "peak_rss": o["peak_rss_mb"] / r["peak_rss_mb"],
                          "top1_points": 100 * (o["top1"] - r["top1"])}))


if __name__ == "__main__":
    main()
