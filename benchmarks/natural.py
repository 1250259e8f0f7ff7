"""100 classes of natural photos: ours against the softmax peer at both jobs, at equal time.

    python benchmarks/natural.py --minutes 5              # one system after the other
    python benchmarks/natural.py --minutes 5 --together   # side by side, at the same time

Trains each system for --minutes on the 100 classes of ../shared/data/tiny-imagenet's base zip,
reports 100-way top-1 on their test images (ours: every training image as an exemplar, scored
through the pair head; the peer: its softmax), then 600 episodes each of 5-way 1-shot, 5-way
5-shot and 20-way 1-shot on the novel zip's 50 classes that neither system trained on (the peer:
cosine of L2-normalized embeddings to class means). benchmarks/bench.py does the work; any of
its flags can be added (--base/--novel point elsewhere; flags for Cifar-100.py go after --).
"""
import sys
from pathlib import Path

import bench

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny-imagenet"


def main(argv):
    if "--data-dir" not in argv and "--base" not in argv:
        argv = ["--data-dir", str(DATA / "tiny-imagenet-base.zip"), *argv]
    if "--novel" not in argv:
        argv = ["--novel", str(DATA / "tiny-imagenet-novel.zip"), *argv]
    if "--only" not in argv:
        argv = ["--only", "ours", "softmax", *argv]
    bench.main([a if a != "--base" else "--data-dir" for a in argv])


if __name__ == "__main__":
    main(sys.argv[1:])
