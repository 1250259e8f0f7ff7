"""Prediction with a saved model: queries against exemplars of every class, P(same) of two
images, and few-shot episodes over a folder of new classes.

Run through `python Test_Cifar-100.py`; `main(args)` takes the parsed flags. `ExemplarClassifier`
and `p_same` are the reusable parts (a web demo imports them too).
"""
import json
import os
import sys

import numpy as np

from . import artifacts, data, evaluate, pairs
from .cli import SAVED
from .errors import UserError

# Exemplars per class taken from the training data when there is no --exemplars: all of them
# (None). A class is scored through the mean of its exemplars' embeddings, and on 100 classes of
# photos every training image as an exemplar scored 6 points above the first 10
# (docs/benchmarks.md, "100 classes of photos"); embedding 50,000 images takes seconds.
DATA_SHOTS = None
UNKNOWN = "unknown"  # the answer for a query below the rejection threshold


def answer(top, threshold=None):
    """The answer for one query's ranked [(name, score), ...]: its best class, or UNKNOWN when
    that class's score is below `threshold` (None: always a class, the seed's behaviour)."""
    return UNKNOWN if threshold is not None and top[0][1] < threshold else top[0][0]


def rejection_threshold(reject, model_dir):
    """--reject: None (absent), the saved threshold (given without a value), or the value given."""
    return artifacts.load_threshold(model_dir) if reject is SAVED else reject


class ExemplarClassifier:
    """Classes given by exemplar images, never necessarily seen in training. A query's score for
    a class is its P(same) with the class's prototype (the mean of its exemplars' embeddings), all
    through one `Scorer`."""

    def __init__(self, scorer, exemplar_images, exemplar_labels, class_names):
        self.scorer = scorer
        self.labels = np.asarray(exemplar_labels)
        self.class_names = dict(class_names)
        self.embeddings = scorer.embed(np.asarray(exemplar_images, np.uint8))   # once, not per query

    def scores(self, images):
        """(class ids, scores[query, class]) for uint8 (N, 32, 32, 3) images."""
        images = np.asarray(images, np.uint8)
        if not len(images):
            classes = np.unique(self.labels)
            return classes, np.zeros((0, len(classes)), np.float32)
        return self.scorer.class_scores(self.scorer.embed(images), self.embeddings, self.labels)

    def rank(self, images, k=5):
        """Per image, the k best classes as [(name, score), ...], best first."""
        classes, scores = self.scores(images)
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[(self.class_names[int(classes[j])], float(row[j])) for j in order]
                for order, row in zip(best, scores)]


def p_same(scorer, image_a, image_b):
    """P(same class) of two uint8 (32, 32, 3) images, from the network's own head."""
    a, b = scorer.embed(np.stack([image_a, image_b]).astype(np.uint8))
    return float(scorer.pair_scores(a[None], b[None])[0])


def _query_paths(paths):
    """--image arguments: files, or folders whose files are all images."""
    found = []
    for p in paths:
        if os.path.isdir(p):
            files = data.image_files(p)
            if not files:
                raise UserError(f"{p} holds no files; pass image files or folders of images")
            found += files
        elif not os.path.exists(p):
            raise UserError(f"{p} does not exist; pass image files or folders of images")
        else:
            found.append(p)
    return found


def load_exemplars(args):
    """(images, labels, class names, where they come from, the Dataset or None): every image of
    --exemplars DIR (or its first --shots per class folder), else the first --shots training
    images of each class of --data-dir. The one place the scripts and the demo take them from."""
    if args.exemplars:
        x, y, names, _ = data.load_classes(args.exemplars)
        if not args.shots:
            return x, y, names, f"every image in {args.exemplars}", None
        idx, y = pairs.exemplar_indices(y, args.shots)   # files are in sorted name order
        return x[idx], y, names, f"the first {args.shots} images of each class folder in {args.exemplars}", None
    ds = data.load(args.data_dir)
    shots = args.shots or DATA_SHOTS
    pairs.require_shots(ds.y_train, shots)
    idx, labels = pairs.exemplar_indices(ds.y_train, shots)
    which = f"the first {shots} training images" if shots else "every training image"
    return ds.x_train[idx], labels, ds.class_names, f"{which} of each class in {ds.source}", ds


def _exemplars(args, scorer):
    """(classifier, table header, the Dataset or None)."""
    x, y, names, _, ds = load_exemplars(args)
    counts = np.bincount(np.unique(y, return_inverse=True)[1])
    each = f"{counts.min()}" if counts.min() == counts.max() else f"{counts.min()}-{counts.max()}"
    header = f"{each} exemplar(s) of {len(counts)} classes" + (f" from {args.exemplars}" if args.exemplars else "")
    return ExemplarClassifier(scorer, x, y, names), header, ds


def _episodes(args, scorer, threshold):
    shots = args.shots or 1
    x, y, names, _ = data.load_classes(args.exemplars)
    if args.ways > len(names):
        raise UserError(f"--ways {args.ways} is more than the {len(names)} classes in {args.exemplars}; "
                        "lower --ways or add class folders")
    if args.open and 2 * args.ways > len(names):
        raise UserError(f"--open --ways {args.ways} needs {2 * args.ways} classes ({args.ways} known + "
                        f"{args.ways} unknown per episode) but {args.exemplars} has {len(names)}; "
                        f"lower --ways to {len(names) // 2} or add class folders")
    counts = np.bincount(y, minlength=len(names))
    short = np.flatnonzero(counts < shots + 1)
    if len(short):
        c = short[0]
        raise UserError(f"class folder {os.path.join(args.exemplars, names[c])} has {counts[c]} image(s); "
                        f"{shots}-shot episodes need at least {shots + 1} per class ({shots} support + 1 query): "
                        "add images, lower --shots, or remove the folder")
    if args.open:
        return _open_episodes(args, scorer, scorer.embed(x), y, names, shots, threshold)
    r = evaluate.few_shot(scorer, scorer.embed(x), y, args.ways, shots, args.episodes, seed=args.seed)
    if args.json:
        print(json.dumps({"ways": args.ways, "shots": shots, "episodes": r["episodes"], "seed": args.seed,
                          "mean": r["mean"], "ci95": r["ci95"]}))
    else:
        print(f"{args.ways}-way {shots}-shot on {len(names)} classes of {args.exemplars}, {r['episodes']} episodes "
              f"(seed {args.seed}, up to 15 queries per class): {100 * r['mean']:.1f}% ± {100 * r['ci95']:.1f}% "
              f"(95% CI; chance {100 / args.ways:.1f}%)")


def _open_episodes(args, scorer, embeddings, y, names, shots, threshold):
    r = evaluate.open_set(scorer, embeddings, y, args.ways, shots, args.episodes, seed=args.seed,
                          threshold=threshold)
    if args.json:
        print(json.dumps({"open": True, "seed": args.seed, **r}))
        return
    print(f"open-set {args.ways}-way {shots}-shot on {len(names)} classes of {args.exemplars}, {r['episodes']} "
          f"episodes (seed {args.seed}; {args.ways} unknown classes more, the same queries per class, up to 15)")
    print(f"closed accuracy on the known queries: {100 * r['mean']:.1f}% ± {100 * r['ci95']:.1f}% "
          f"(95% CI; chance {100 / args.ways:.1f}%)")
    print(f"AUROC known vs unknown by the best class score: {r['auroc']:.3f} ± {r['auroc_ci95']:.3f} "
          f"(per episode, averaged; pooled {r['auroc_pooled']:.3f}; chance 0.5)")
    if threshold is not None:
        print(f"at P(same) {threshold:.3f}: {100 * r['known_accepted']:.1f}% of known queries accepted, "
              f"{100 * r['unknown_rejected']:.1f}% of unknown rejected")


def _pair(args, scorer):
    left, right = args.pair
    p = p_same(scorer, data.read_image(left), data.read_image(right))
    print(json.dumps({"left": left, "right": right, "p_same": round(p, 6)}) if args.json
          else f"P(same class) {p:.3f}: {left} vs {right}")


def main(args):
    if args.open and not args.episodes:
        raise UserError("--open runs open-set episodes; add --episodes N (and --exemplars DIR)")
    if args.reject is not None and (args.pair or (args.episodes and not args.open)):
        raise UserError("--reject answers `unknown` for --image, --queries, the test images and --open "
                        f"episodes, not {'--pair' if args.pair else 'closed --episodes'}; drop --reject")
    if args.episodes and not args.exemplars:
        raise UserError("--episodes draws its classes from --exemplars DIR; pass --exemplars")
    if args.exemplars and not (args.image or args.queries or args.episodes):
        raise UserError("--exemplars needs queries: --image PATH ..., --queries DIR, or --episodes N")
    scorer = artifacts.load_scorer(args.model_dir)
    threshold = rejection_threshold(args.reject, args.model_dir)
    if args.pair:
        return _pair(args, scorer)
    if args.episodes:
        return _episodes(args, scorer, threshold)

    # Queries first: a bad file fails before exemplars or data are loaded.
    if args.image:
        paths = _query_paths(args.image)
        x, true = data.read_images(paths), [None] * len(paths)
    elif args.queries:
        x, y, query_names, paths = data.load_classes(args.queries)
        true = [query_names[int(c)] for c in y]
    classifier, header, ds = _exemplars(args, scorer)
    if not (args.image or args.queries):
        count = min(args.count, len(ds.y_test))
        x, true = ds.x_test[:count], [ds.class_names[int(c)] for c in ds.y_test[:count]]
        paths = [f"test image {i}" for i in range(count)]

    ranked = classifier.rank(x, k=5)
    predicted = [answer(top, threshold) for top in ranked]
    if args.json:
        for path, t, top, p in zip(paths, true, ranked, predicted):
            line = {"image": path, "true": t, "top5": [[n, round(s, 6)] for n, s in top]}
            if threshold is not None:
                line.update(answer=p, threshold=round(threshold, 6))
            print(json.dumps(line))
        return
    if args.image:
        for path, top, p in zip(paths, ranked, predicted):
            why = f"{UNKNOWN} (best score below {threshold:.3f}); " if p == UNKNOWN else ""
            print(f"{path}: {why}" + ", ".join(f"{n} {s:.3f}" for n, s in top))
        return

    known = set(classifier.class_names.values())
    unknown = sorted(set(true) - known)
    if unknown:
        fate = (f"they are right when answered {UNKNOWN}" if threshold is not None
                else "their images count as wrong")
        print(f"note: {len(unknown)} query class(es) have no exemplars ({', '.join(unknown[:5])}"
              f"{', ...' if len(unknown) > 5 else ''}); {fate}", file=sys.stderr)
    right = np.array([p == t or (p == UNKNOWN and t not in known) for p, t in zip(predicted, true)])
    what = f"{len(x)} images of {args.queries}" if args.queries else f"{len(x)} test images"
    print(f"{what}, each against {header}")
    w = max(20, *(len(n) + 1 for n in true + predicted))   # columns stay apart for long names
    print(f"{'index':>5}  {'true':<{w}} {'predicted':<{w}} {'score':>6}")
    for i, (t, p, top) in enumerate(zip(true, predicted, ranked)):
        tail = f"  {paths[i]}" if args.queries else ""
        print(f"{i:>5}  {t:<{w}} {p:<{w}} {top[0][1]:>6.3f}  {'right' if right[i] else 'wrong'}{tail}")
    if not args.no_plots:
        from . import plots
        path = artifacts.check_writable(args.model_dir) / "predictions.png"
        drawn = plots.predictions(x, predicted, true, path, right)
        print(f"wrote {path}" + (f" (the first {drawn} of {len(x)} images)" if drawn < len(x) else ""))
    if threshold is not None:
        rejected = sum(p == UNKNOWN for p in predicted)
        print(f"answered {UNKNOWN}: {rejected}/{len(x)} (best score below {threshold:.3f})")
    print(f"accuracy: {right.sum()}/{len(x)} ({100 * right.mean():.1f}%)")
