"""One-shot transfer: train on some classes, recognise classes never seen in training from one
example each, with the product's own commands.

    python benchmarks/oneshot.py --minutes 10          # Omniglot: small1 -> small2-only alphabets
    python benchmarks/oneshot.py --train ../shared/data/cifar10-images --eval none --minutes 5 -- --holdout 4

Trains `Cifar-100.py --data-dir TRAIN --max-minutes M [flags after --]`, then runs
`Test_Cifar-100.py --exemplars EVAL --episodes 600 --shots 1` for each --ways, over the class
folders of EVAL whose names start with one of --eval-prefix (a temporary folder of links).
Prints one JSON line: the training numbers, each episode result, and, with --holdout among the
flags, the held-out classes' few-shot numbers that training measured itself.
"""
import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OMNIGLOT = ROOT.parent / "shared" / "data" / "omniglot-small"
SMALL2_ONLY = ["Japanese_(katakana)", "Sanskrit", "Tagalog"]   # alphabets small1 does not have


def run(*args):
    r = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"error: {' '.join(map(str, args[:1]))} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return r.stdout


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", default=str(OMNIGLOT / "small1"), help="class folders to train on")
    p.add_argument("--eval", default=str(OMNIGLOT / "small2"), help="class folders of unseen classes, or 'none'")
    p.add_argument("--eval-prefix", nargs="+", default=SMALL2_ONLY, help="keep eval classes whose names start so")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--ways", type=int, nargs="+", default=[20, 5])
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("flags", nargs="*", help="Cifar-100.py flags, after --")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out, exemplars = Path(tmp) / "model", Path(tmp) / "unseen"
        run("Cifar-100.py", "--data-dir", args.train, "--out", out, "--max-minutes", args.minutes,
            "--no-plots", *args.flags)
        with open(out / "metrics.pkl", "rb") as f:
            m = pickle.load(f)
        result = {"train": args.train, "minutes": args.minutes, "flags": " ".join(args.flags),
                  "train_steps": m["train_steps"], "train_seconds": round(m["train_seconds"], 1),
                  "train_images_per_s": round(m["train_images_per_s"]), "seen_top1": m["test"]["top1"]}
        result.update({f"holdout_{k}": [round(100 * r["mean"], 1), round(100 * r["ci95"], 1)]
                       for k, r in m.get("few_shot", {}).items()})
        if args.eval != "none":
            exemplars.mkdir()
            classes = [d for d in sorted(Path(args.eval).iterdir())
                       if d.is_dir() and d.name.startswith(tuple(args.eval_prefix))]
            for d in classes:
                os.symlink(d.resolve(), exemplars / d.name)
            result["eval_classes"] = len(classes)
            for ways in args.ways:
                r = json.loads(run("Test_Cifar-100.py", "--model-dir", out, "--exemplars", exemplars,
                                   "--episodes", args.episodes, "--ways", ways, "--shots", 1, "--json"))
                result[f"{ways}-way-1-shot"] = [round(100 * r["mean"], 1), round(100 * r["ci95"], 1)]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
