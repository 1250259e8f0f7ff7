"""Prediction with a saved model: each query against `shots` exemplars of every class.

Run through `python Test_Cifar-100.py`; `main(args)` takes the parsed flags.
"""
import numpy as np

from . import artifacts, data, evaluate, pairs
from .errors import UserError


def read_image(path):
    """Any image Pillow can read, as uint8 32x32 RGB."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path} ({type(e).__name__}); pass a PNG/JPEG/... file") from None


class ExemplarClassifier:
    """Queries ranked against fixed exemplars, whose embeddings are computed once, here."""

    def __init__(self, scorer, exemplar_images, exemplar_labels, class_names):
        self.scorer = scorer
        self.labels = np.asarray(exemplar_labels)
        self.class_names = class_names
        self.embeddings = scorer.embed(exemplar_images)

    def rank(self, images, k=5):
        """Per image, the k best classes as [(name, mean P(same)), ...], best first."""
        classes, scores = self.scorer.class_scores(self.scorer.embed(np.asarray(images)),
                                                   self.embeddings, self.labels)
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[(self.class_names[int(classes[j])], float(row[j])) for j in order]
                for row, order in zip(scores, best)]


def p_same(scorer, image_a, image_b):
    """P(same class) of two uint8 32x32 RGB images."""
    emb = scorer.embed(np.stack([image_a, image_b]))
    return float(scorer.pair_scores(emb[:1], emb[1:])[0])


def main(args):
    model = artifacts.load_model(args.model_dir)
    images = [read_image(p) for p in args.image or []]   # fail on a bad file before loading data
    ds = data.load(args.data_dir)
    smallest = np.unique(ds.y_train, return_counts=True)[1].min()
    if args.shots > smallest:
        raise UserError(f"--shots {args.shots} is more than the smallest class has "
                        f"({smallest} training images); lower --shots")
    scorer = evaluate.Scorer(model)
    ex_idx, ex_labels = pairs.exemplar_indices(ds.y_train, args.shots)
    exemplars = scorer.embed(ds.x_train[ex_idx])
    name = lambda c: ds.class_names[int(c)]

    if images:
        classes, scores = scorer.class_scores(scorer.embed(np.stack(images)), exemplars, ex_labels)
        for path, row in zip(args.image, scores):
            best = np.argsort(-row, kind="stable")[:5]
            print(f"{path}: " + ", ".join(f"{name(classes[k])} {row[k]:.3f}" for k in best))
        return

    count = min(args.count, len(ds.y_test))
    x, y = ds.x_test[:count], ds.y_test[:count]
    classes, scores = scorer.class_scores(scorer.embed(x), exemplars, ex_labels)
    best = scores.argmax(1)
    predicted = classes[best]
    right = predicted == y
    print(f"{count} test images, each against {args.shots} exemplar(s) of {len(classes)} classes")
    print(f"{'index':>5}  {'true':<20} {'predicted':<20} {'score':>6}")
    for i in range(count):
        print(f"{i:>5}  {name(y[i]):<20} {name(predicted[i]):<20} {scores[i, best[i]]:>6.3f}  "
              f"{'right' if right[i] else 'wrong'}")
    if not args.no_plots:
        from . import plots
        path = artifacts.check_writable(args.model_dir) / "predictions.png"
        plots.predictions(x, [name(c) for c in predicted], [name(c) for c in y], path)
        print(f"wrote {path}")
    print(f"accuracy: {right.sum()}/{count} ({100 * right.mean():.1f}%)")
