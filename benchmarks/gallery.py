"""A gallery that stays: the first and a second identical `Test_Cifar-100.py --image` call, each
timed as a whole process (Python and TensorFlow's start-up included).

    python benchmarks/gallery.py --model-dir M                  # Tiny ImageNet base zip, 6 photos
    python benchmarks/gallery.py --model-dir M --train-minutes 1   # train M first (if it has no model)

The first call reads and embeds every exemplar (the zip's 50,000 training images) and keeps their
embeddings beside the model; the second finds them there. Any gallery already in M is removed
first, so the first call is a cold one. Then, in this process, the exemplars alone
(`gallery.exemplars`: key, read or decode + embed): from the gallery, and again without it. The photos are the first test image of each of the
zip's first --photos classes, copied out to a temporary folder. Prints one JSON line: both
times, their ratio, and whether the two answers are the same (they must be).
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT.parent / "shared" / "data" / "tiny-imagenet" / "tiny-imagenet-base.zip"


def timed(*args):
    start = time.monotonic()
    r = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if r.returncode:
        sys.exit(f"error: {args[0]} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return seconds, r.stdout


def photos(archive, n, folder):
    """The first test image of each of the archive's first n test classes, as files."""
    with zipfile.ZipFile(archive) as z:
        first = {}
        for m in sorted(z.namelist()):
            parts = ("/" + m).split("/")
            if len(parts) >= 3 and parts[-3] == "test" and parts[-1]:
                first.setdefault(parts[-2], m)
        names = [first[c] for c in sorted(first)[:n]]
        for i, name in enumerate(names):
            (folder / f"{i:02d}-{Path(name).name}").write_bytes(z.read(name))
    return sorted(folder.iterdir())


def exemplar_seconds(data_dir, model):
    """(from the gallery, without it) seconds of gallery.exemplars, as Test_Cifar-100.py calls it."""
    sys.path.insert(0, str(ROOT))
    from argparse import Namespace

    from siamese import artifacts, gallery
    scorer = artifacts.load_scorer(model)
    args = Namespace(exemplars=None, data_dir=data_dir, shots=None)
    seconds = []
    for _ in range(2):
        start = time.monotonic()
        gallery.exemplars(args, scorer, model)
        seconds.append(time.monotonic() - start)
        for old in model.glob("gallery-*.npz"):
            old.unlink()
    return seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(BASE), help="the exemplars' training data (default: Tiny ImageNet base)")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--photos", type=int, default=6)
    p.add_argument("--train-minutes", type=float, help="train --model-dir on --data-dir first, this long")
    args = p.parse_args()
    model = Path(args.model_dir)
    train_seconds = None
    if args.train_minutes and not (model / "siamese.json").exists():
        train_seconds, _ = timed("Cifar-100.py", "--data-dir", args.data_dir, "--out", model,
                                 "--max-minutes", args.train_minutes, "--no-plots")
    for old in model.glob("gallery-*.npz"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        images = photos(args.data_dir, args.photos, Path(tmp))
        call = ["Test_Cifar-100.py", "--model-dir", model, "--data-dir", args.data_dir, "--image", *images]
        first, answer = timed(*call)
        second, again = timed(*call)
    kept = sum(g.stat().st_size for g in model.glob("gallery-*.npz"))
    warm, cold = exemplar_seconds(args.data_dir, model)
    print(json.dumps({"data": args.data_dir, "photos": len(images), "first_s": round(first, 1),
                      "second_s": round(second, 1), "ratio": round(first / second, 2), "same_answer": answer == again,
                      "exemplars_cold_s": round(cold, 2), "exemplars_warm_s": round(warm, 2),
                      "exemplars_ratio": round(cold / warm, 1),
                      "gallery_mb": round(kept / 1e6, 1),
                      "train_s": train_seconds and round(train_seconds)}))


if __name__ == "__main__":
    main()
