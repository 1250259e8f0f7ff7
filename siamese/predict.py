"""Prediction with a saved model: queries against exemplars of every class, P(same) of two
images, and few-shot episodes over a folder of new classes.

Run through `python Test_Cifar-100.py`; `main(args)` takes the parsed flags. `ExemplarClassifier`
and `p_same` are the reusable parts (a web demo imports them too). The exemplars' embeddings
come from gallery.py, which keeps them beside the model between calls.
"""
import io
import json
import os
import sys
from pathlib import Path

import numpy as np

from . import artifacts, data, evaluate, gallery
from .cli import SAVED
from .errors import UserError

UNKNOWN = "unknown"  # the answer for a query below the rejection threshold
QUERIES_MAP = "queries_map.png"


def answer(top, threshold=None):
    """The answer for one query's ranked [(name, score, ...), ...]: its best class, or UNKNOWN when
    that class's score is below `threshold` (None: always a class, the seed's behaviour)."""
    return UNKNOWN if threshold is not None and top[0][1] < threshold else top[0][0]


def rejection_threshold(reject, model_dir, learned=False):
    """--reject: None (absent), the saved threshold (given without a value; `learned`: the one for
    classes scored by their learned directions), or the value given."""
    return artifacts.load_threshold(model_dir, learned) if reject is SAVED else reject


class ExemplarClassifier:
    """Classes given by exemplars, never necessarily seen in training. A query's score for a
    class is its P(same) with the class's prototype (the mean of its exemplars' embeddings), all
    through one `Scorer`; with a temperature (saved beside the model by training), also
    P(class | query), a softmax of the head's logits over the classes. `learned` ({class name:
    vector}, `learned_directions`): classes training learned a direction for point their
    prototype along it (evaluate.class_prototypes)."""

    def __init__(self, scorer, embeddings, exemplar_labels, class_names, paths=None, temperature=None,
                 learned=None):
        self.scorer = scorer
        self.embeddings = np.asarray(embeddings, np.float32)
        self.labels = np.asarray(exemplar_labels)
        self.class_names = dict(class_names)
        self.paths = paths
        self.temperature = temperature
        learned = learned or {}
        self.learned = {c: learned[n] for c, n in self.class_names.items() if n in learned} or None

    @classmethod
    def of(cls, scorer, gallery, temperature=None, learned=None):
        return cls(scorer, gallery.embeddings, gallery.labels, gallery.class_names, gallery.paths, temperature,
                   learned)

    def rank(self, images, k=5):
        """Per image, the k best classes as [(name, P(same)), ...], best first."""
        embeddings = self.scorer.embed(np.asarray(images, np.uint8))
        return [[(name, p) for name, p, _ in top] for top in self.top(embeddings, k)]

    def top(self, embeddings, k=5):
        """Per query embedding, the k best classes as [(name, P(same), P(class) or None), ...],
        best first (both orders are the logits' order)."""
        classes, logits = self.scorer.class_logits(embeddings, self.embeddings, self.labels, self.learned)
        p_same = evaluate.sigmoid(logits)
        p_class = (evaluate.class_probabilities(logits, self.temperature) if self.temperature
                   else np.full(logits.shape, None))
        best = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        return [[(self.class_names[int(classes[j])], float(s[j]), None if c[j] is None else float(c[j]))
                 for j in order] for order, s, c in zip(best, p_same, p_class)]

    def neighbours(self, embeddings, k):
        """Per query embedding, the k exemplars with the highest P(same): [(file, class, P(same))]."""
        found, scores = self.scorer.nearest(embeddings, self.embeddings, k)
        return [[(self.paths[int(j)], self.class_names[int(self.labels[j])], float(p)) for j, p in zip(row, ps)]
                for row, ps in zip(found, scores)]


def learned_directions(args, scorer):
    """The saved class directions a prediction scores by (`ExemplarClassifier`'s `learned`): where
    the exemplars are the training data's, every image of each class (no --exemplars, no --shots),
    unless --prototypes exemplars; None otherwise (every class by its exemplars)."""
    if args.exemplars or args.shots or getattr(args, "prototypes", "learned") == "exemplars":
        return None
    return artifacts.load_directions(args.model_dir, int(scorer.branch.output.shape[-1]))


def p_same(scorer, image_a, image_b):
    """P(same class) of two uint8 (S, S, 3) images (the model's size), from the network's own head."""
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


def _header(args, labels, learned=None):
    counts = np.bincount(np.unique(labels, return_inverse=True)[1])
    each = f"{counts.min()}" if counts.min() == counts.max() else f"{counts.min()}-{counts.max()}"
    if learned:
        rest = len(counts) - len(learned)
        return (f"the learned directions of {len(learned)} classes" + (f" and {each} exemplar(s) of {rest} more"
                                                                       if rest else "")
                + " (--prototypes exemplars: their exemplars instead)")
    return f"{each} exemplar(s) of {len(counts)} classes" + (f" from {args.exemplars}" if args.exemplars else "")


def _episodes(args, scorer, threshold):
    shots = args.shots or 1
    x, y, names, _ = data.load_classes(args.exemplars, size=scorer.size)
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
    p = p_same(scorer, data.read_image(left, size=scorer.size), data.read_image(right, size=scorer.size))
    print(json.dumps({"left": left, "right": right, "p_same": round(p, 6)}) if args.json
          else f"P(same class) {p:.3f}: {left} vs {right}")


def _check(args):
    """Flags that cannot go together: one line, before the model is loaded."""
    if args.open and not args.episodes:
        raise UserError("--open runs open-set episodes; add --episodes N (and --exemplars DIR)")
    if args.reject is not None and (args.pair or (args.episodes and not args.open) or args.embed or args.export):
        which = ("--pair" if args.pair else "closed --episodes" if args.episodes else
                 "--embed" if args.embed else "--export")
        raise UserError("--reject answers `unknown` for --image, --queries, the test images and --open "
                        f"episodes, not {which}; drop --reject")
    if args.episodes and not args.exemplars:
        raise UserError("--episodes draws its classes from --exemplars DIR; pass --exemplars")
    if args.exemplars and not (args.image or args.queries or args.episodes):
        raise UserError("--exemplars needs queries: --image PATH ..., --queries DIR, or --episodes N")
    if args.neighbours and not (args.image or args.queries):
        raise UserError("--neighbours lists the exemplars nearest to --image or --queries images; add one of them")
    if args.out_file and not args.embed:
        raise UserError("--out-file holds the embeddings of --embed; add --embed PATH ...")
    if args.out_file and Path(args.out_file).suffix != ".npy":
        raise UserError(f"--out-file {args.out_file} must end in .npy (it is written with numpy.save)")
    if args.export:
        target = Path(args.export)
        if target.exists() and not (target.is_dir() and not any(target.iterdir())):
            raise UserError(f"--export {target} exists and is not an empty folder; pass a new folder "
                            "(the SavedModel is written whole, never over other files)")


def _embed(args, scorer):
    """--embed: one JSON line per image with its embedding, or an .npy of them (--out-file)."""
    names, parts = [], []
    for path in args.embed:
        with data.files_under(path) as files:
            parts.append(data.read_images(files, size=scorer.size))
            names += [str(f) for f in files]
    embeddings = scorer.embed(np.concatenate(parts))
    if args.out_file:
        buffer = io.BytesIO()
        np.save(buffer, embeddings)
        artifacts.write_file(args.out_file, buffer.getvalue(), fix="free some space or pass another --out-file")
        print(f"wrote {args.out_file}: {len(embeddings)} embeddings of {embeddings.shape[1]} float32, "
              "one row per file, in this order:")
        for name in names:
            print(name)
        return
    for name, e in zip(names, embeddings):
        print(json.dumps({"image": name, "embedding": e.tolist()}))


def _export(args, model, scorer):
    from . import export
    export.saved_model(model, args.export, scorer.flip, scorer.shifts)
    views = " + ".join(["the image"] + ["its mirror image"] * scorer.flip + ["pixel shifts"] * scorer.shifts)
    print(f"wrote the SavedModel {args.export}: `embed(images)` -> embeddings, `p_same(left, right)` -> "
          f"P(same class), as --embed and --pair give them ({views}); images float32 (N, {scorer.size}, {scorer.size}, 3), "
          "pixels 0..255; load with tf.saved_model.load")


def _described(top, temperature):
    if temperature:
        return ", ".join(f"{n} {100 * c:.0f}% ({'P(same) ' if i == 0 else ''}{s:.3f})"
                         for i, (n, s, c) in enumerate(top))
    return ", ".join(f"{n} {s:.3f}" for n, s, _ in top)


def _neighbour_lines(near):
    return [f"  {i}. {path} ({name}), P(same) {p:.3f}" for i, (path, name, p) in enumerate(near, 1)]


def main(args):
    _check(args)
    model = artifacts.load_model(args.model_dir)
    scorer = artifacts.load_scorer(args.model_dir, model)
    if args.pair:
        return _pair(args, scorer)
    if args.episodes:
        return _episodes(args, scorer, rejection_threshold(args.reject, args.model_dir))
    if args.embed:
        return _embed(args, scorer)
    if args.export:
        return _export(args, model, scorer)
    temperature = artifacts.load_temperature(args.model_dir)
    learned = learned_directions(args, scorer)   # before the exemplars: a damaged file fails at once
    threshold = rejection_threshold(args.reject, args.model_dir, learned is not None)

    # Queries first: a bad file fails before exemplars or data are loaded.
    if args.image:
        paths = _query_paths(args.image)
        x, true = data.read_images(paths, size=scorer.size), [None] * len(paths)
    elif args.queries:
        x, y, query_names, paths = data.load_classes(args.queries, size=scorer.size)
        true = [query_names[int(c)] for c in y]
    exemplars, ds = gallery.exemplars(args, scorer, args.model_dir,
                                      test_images=0 if args.image or args.queries else args.count)
    classifier = ExemplarClassifier.of(scorer, exemplars, temperature, learned)
    header = _header(args, exemplars.labels, classifier.learned)
    if not (args.image or args.queries):
        count = min(args.count, len(ds.y_test))
        x, true = ds.x_test[:count], [ds.class_names[int(c)] for c in ds.y_test[:count]]
        paths = [f"test image {i}" for i in range(count)]

    query_emb = scorer.embed(x)
    ranked = classifier.top(query_emb, k=5)
    predicted = [answer(top, threshold) for top in ranked]
    near = classifier.neighbours(query_emb, args.neighbours) if args.neighbours else [None] * len(x)
    if args.json:
        for path, t, top, p, n in zip(paths, true, ranked, predicted, near):
            line = {"image": path, "true": t, "top5": [[c, round(s, 6)] for c, s, _ in top]}
            if temperature:
                line["p_class"] = [round(pc, 6) for _, _, pc in top]
            if threshold is not None:
                line.update(answer=p, threshold=round(threshold, 6))
            if n is not None:
                line["neighbours"] = [[f, c, round(s, 6)] for f, c, s in n]
            print(json.dumps(line))
        return
    if args.image:
        for path, top, p, n in zip(paths, ranked, predicted, near):
            why = f"{UNKNOWN} (best score below {threshold:.3f}); " if p == UNKNOWN else ""
            print(f"{path}: {why}" + _described(top, temperature))
            for line in _neighbour_lines(n or []):
                print(line)
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
    confidence = f"{'P(class)':>8} " if temperature else ""
    print(f"{'index':>5}  {'true':<{w}} {'predicted':<{w}} {confidence}{'P(same)':>7}")
    for i, (t, p, top, n) in enumerate(zip(true, predicted, ranked, near)):
        tail = f"  {paths[i]}" if args.queries else ""
        shown = f"{top[0][2]:>8.3f} " if temperature else ""
        print(f"{i:>5}  {t:<{w}} {p:<{w}} {shown}{top[0][1]:>7.3f}  {'right' if right[i] else 'wrong'}{tail}")
        for line in _neighbour_lines(n or []):
            print(line)
    if args.queries:
        _retrieval_line(scorer, query_emb, y, len(x))
    if not args.no_plots:
        _figures(args, x, query_emb, true, predicted, right, threshold)
    if threshold is not None:
        rejected = sum(p == UNKNOWN for p in predicted)
        print(f"answered {UNKNOWN}: {rejected}/{len(x)} (best score below {threshold:.3f})")
    print(f"accuracy: {right.sum()}/{len(x)} ({100 * right.mean():.1f}%)")


def _retrieval_line(scorer, embeddings, labels, n):
    r = evaluate.retrieval(scorer, embeddings, labels)
    if r is None:
        print(f"retrieval: no query image shares its class with another of the {n}; nothing to find")
        return
    print(f"retrieval among the {n} query images, each against the others (Musgrave et al. 2020): "
          f"Recall@1 {r['recall@1']:.3f}, Recall@5 {r['recall@5']:.3f}, MAP@R {r['map@r']:.3f} "
          f"({r['queries']} images with another of their class)")


def _figures(args, x, embeddings, true, predicted, right, threshold):
    from . import plots
    out = artifacts.check_writable(args.model_dir)
    drawn = plots.predictions(x, predicted, true, out / "predictions.png", right)
    print(f"wrote {out / 'predictions.png'}" + (f" (the first {drawn} of {len(x)} images)" if drawn < len(x) else ""))
    plots.confusion(true, predicted, out / "confusion.png", unknown=UNKNOWN if threshold is not None else None)
    print(f"wrote {out / 'confusion.png'}")
    if args.queries:
        names = sorted(set(true))
        labels = np.array([names.index(t) for t in true])
        # Not embedding_map.png, which is training's map of its test images.
        method = plots.embedding_map(embeddings, labels, dict(enumerate(names)), out / QUERIES_MAP,
                                     title=f"the {len(x)} query images")
        print(f"wrote {out / QUERIES_MAP} ({method})")
