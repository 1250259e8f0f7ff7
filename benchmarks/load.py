"""Loading an archive in place against its extracted folder: seconds and peak RSS of each load.

    python benchmarks/load.py ../shared/data/tiny-imagenet/tiny-imagenet-base.zip /tmp/ti --repeats 3

Each load runs `data.load(PATH)` in a fresh process (so its peak RSS is its own; Keras is
imported before the clock starts, as in training), alternating the sources so that a machine
growing busier or quieter touches both alike. Wall-clock and CPU seconds (user + system, all
threads: less sensitive to other jobs on a shared machine). One JSON line per load, then one
per source with the medians.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
import keras   # imported by training anyway (and by the progress bar): not part of the load
from siamese import data
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
start, start_cpu = time.perf_counter(), cpu()
ds = data.load(sys.argv[1])
seconds, cpu_seconds = time.perf_counter() - start, cpu() - start_cpu
print(json.dumps({"seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2),
                  "images": len(ds.y_train) + len(ds.y_test),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sources", nargs="+", help="paths for --data-dir: archives, folders")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    runs = {s: [] for s in args.sources}
    for repeat in range(args.repeats):
        for source in args.sources:
            r = subprocess.run([sys.executable, "-c", CHILD, source, str(ROOT)], capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"error: loading {source} failed: {r.stderr.strip()[-500:]}")
            result = json.loads(r.stdout.strip().splitlines()[-1])
            runs[source].append(result)
            print(json.dumps({"source": source, "repeat": repeat, **result}), flush=True)
    for source, results in runs.items():
        print(json.dumps({"source": source, "median_seconds": statistics.median(r["seconds"] for r in results),
                          "median_cpu_seconds": statistics.median(r["cpu_seconds"] for r in results),
                          "max_peak_rss_mb": max(r["peak_rss_mb"] for r in results)}))


if __name__ == "__main__":
    main()
