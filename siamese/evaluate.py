"""The one scorer and the numbers made from it.

Every image goes through the branch once; pair scores are the head applied to the L1 of
cached embeddings, in chunks that bound memory. A class is scored through its prototype: the
mean of its exemplars' embeddings. Training's final evaluation,
Test_Cifar-100.py, the few-shot episodes and the benchmark all score through `Scorer`.
"""
import numpy as np
import tensorflow as tf

from . import pairs
from .model import parts

EVAL_SEED = 1234          # fixed, so runs with different --seed are compared on the same pairs
VERIFICATION_PAIRS = 2000
KNOWN_ACCEPTED = 0.9      # the rejection threshold's promise, on the training classes (docs/design.md)
CALIBRATION_WAYS, CALIBRATION_EPISODES = 5, 300
CALIBRATION_SHOTS = 5     # exemplars per known class when training scores all of them (--shots all)
CHUNK_FLOATS = 1 << 23    # floats in one (queries, exemplars, dim) L1 block: 32 MB


class Scorer:
    """`flip`: test-time augmentation, each image embedded as the merge of its own embedding and
    its mirror image's (for data where a mirror image is the same class: training says so)."""

    def __init__(self, siamese, batch_size=200, flip=False):   # 200: activations of a batch stay ~100 MB
        self.branch, self.head = parts(siamese)
        self.batch_size, self.flip = batch_size, flip
        self._class_chunk = tf.function(self._class_chunk_eager, reduce_retracing=True)

    def embed(self, images):
        """uint8 (N, 32, 32, 3) -> float32 (N, D): one branch pass per image (two with `flip`)."""
        return embed(self.branch, images, self.batch_size, self.flip)

    def pair_scores(self, a, b):
        """P(same) for aligned embedding pairs a[i], b[i]."""
        return np.concatenate([self.head(tf.abs(a[i:i + 65536] - b[i:i + 65536])).numpy()[:, 0]
                               for i in range(0, len(a), 65536)]) if len(a) else np.zeros(0)

    def _class_chunk_eager(self, queries, prototypes):
        l1 = tf.abs(queries[:, None, :] - prototypes[None, :, :])    # (q, C, D)
        return self.head(l1)[..., 0]

    def class_scores(self, queries, exemplars, exemplar_labels):
        """P(same) of every query with each class's prototype.

        Returns (classes, scores) with scores[q, k] for class id classes[k]."""
        classes, prototypes = class_prototypes(exemplars, exemplar_labels)
        prototypes = tf.constant(prototypes)
        step = max(1, CHUNK_FLOATS // (len(classes) * prototypes.shape[1]))
        scores = [self._class_chunk(tf.constant(queries[i:i + step], tf.float32), prototypes).numpy()
                  for i in range(0, len(queries), step)]
        return classes, np.concatenate(scores) if scores else np.zeros((0, len(classes)), np.float32)


def embed(branch, images, batch_size=200, flip=False):
    """Embeddings of uint8 images, cast to float one batch at a time (a float copy of them all
    would cost 4x their memory). With `flip`, each the merge (as `class_prototypes` merges a
    class's exemplars) of the image's and its mirror image's embeddings."""
    ds = (tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
          .map(lambda x: tf.cast(x, tf.float32)).prefetch(2))
    out = []
    for x in ds:
        e = branch(x, training=False).numpy()
        if flip:
            mirrored = branch(tf.reverse(x, [2]), training=False).numpy()
            e = class_prototypes(np.concatenate([e, mirrored]), np.tile(np.arange(len(e)), 2))[1]
        out.append(e)
    return np.concatenate(out) if out else np.zeros((0, branch.output.shape[-1]), np.float32)


def class_prototypes(exemplars, labels):
    """(class ids, one embedding per class): the mean of the class's exemplar embeddings, rescaled
    to their mean length. The mean of points on a sphere lies inside it; put back on it, the
    prototype is compared at the distances training saw. With 1 exemplar it is that exemplar.
    Averaging embeddings scored higher than averaging P(same) over the exemplars (5-shot episodes
    and 100-way top-1 on photos: docs/benchmarks.md, "100 classes of photos")."""
    classes, inverse = np.unique(labels, return_inverse=True)
    exemplars = np.asarray(exemplars, np.float32)
    counts = np.bincount(inverse, minlength=len(classes)).astype(np.float32)[:, None]
    sums = np.zeros((len(classes), exemplars.shape[1]), np.float32)
    np.add.at(sums, inverse, exemplars)
    lengths = np.bincount(inverse, np.linalg.norm(exemplars, axis=1), len(classes))[:, None] / counts
    means = sums / counts
    scale = lengths / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return classes, (means * scale).astype(np.float32)


def top_k(classes, scores, k):
    """Class ids of the k best scores per row, best first."""
    return classes[np.argsort(-scores, axis=1, kind="stable")[:, :k]]


def roc_curve(same, scores):
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    order = np.argsort(-scores, kind="stable")
    same, scores = np.asarray(same)[order], np.asarray(scores)[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp = np.cumsum(same)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    return np.r_[0, fp / max(fp[-1], 1)], np.r_[0, tp / max(tp[-1], 1)]


def roc_auc(same, scores):
    fpr, tpr = roc_curve(same, scores)
    return float(np.trapezoid(tpr, fpr))


def test_metrics(scorer, train_x, train_y, test_emb, test_y, shots):
    """Verification on fixed balanced test pairs, and k-way exemplar classification of every
    test image (given as its embedding) against the first `shots` training images of each class
    (None: all of them)."""
    left, right, same = pairs.verification_pairs(test_y, VERIFICATION_PAIRS, EVAL_SEED)
    pair_scores = scorer.pair_scores(test_emb[left], test_emb[right])
    ex_idx, ex_labels = pairs.exemplar_indices(train_y, shots)
    classes, scores = scorer.class_scores(test_emb, scorer.embed(train_x[ex_idx]), ex_labels)
    ranked = top_k(classes, scores, min(5, len(classes)))
    return {
        "verification_accuracy": float(np.mean((pair_scores > 0.5) == same)),
        "roc_auc": roc_auc(same, pair_scores),
        "top1": float(np.mean(ranked[:, 0] == test_y)),
        "top5": float(np.mean((ranked == test_y[:, None]).any(1))),
        "classes": int(len(classes)),
        "test_images": int(len(test_y)),
    }, (same, pair_scores)


def few_shot(scorer, embeddings, labels, ways, shots, episodes, seed=EVAL_SEED):
    """Mean accuracy and 95% confidence interval of N-way K-shot episodes over cached
    embeddings; a query is assigned the class whose support images score best on average."""
    accuracies = []
    for support, query in pairs.episodes(labels, ways, shots, episodes, seed=seed):
        ids, scores = scorer.class_scores(embeddings[query], embeddings[support], labels[support])
        accuracies.append(np.mean(ids[scores.argmax(1)] == labels[query]))
    return {"mean": float(np.mean(accuracies)), "ci95": _ci95(accuracies), "episodes": int(episodes)}


def _ci95(values):
    return float(1.96 * np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def open_scores(scorer, embeddings, labels, ways, shots, episodes, seed=EVAL_SEED):
    """The raw material of open-set numbers, per open episode (pairs.open_episodes): whether each
    known query got its class, and every query's best class score (known queries, unknown)."""
    for support, known, unknown in pairs.open_episodes(labels, ways, shots, episodes, seed=seed):
        query = np.concatenate([known, unknown])
        ids, scores = scorer.class_scores(embeddings[query], embeddings[support], labels[support])
        best = scores.max(1)
        yield ids[scores[:len(known)].argmax(1)] == labels[known], best[:len(known)], best[len(known):]


def open_set(scorer, embeddings, labels, ways, shots, episodes, seed=EVAL_SEED, threshold=None):
    """Few-shot open-set recognition: closed accuracy on the known queries (mean ± 95% CI over
    episodes) and the AUROC of telling known queries from unknown ones by their best class score,
    computed per episode and averaged (as the FSOR papers report it), and over all episodes'
    queries pooled (what one fixed threshold faces). With `threshold`, also the shares of known
    queries accepted and unknown queries rejected by it."""
    accuracy, auroc, known, unknown = [], [], [], []
    for right, k, u in open_scores(scorer, embeddings, labels, ways, shots, episodes, seed):
        accuracy.append(right.mean())
        auroc.append(roc_auc(np.r_[np.ones(len(k)), np.zeros(len(u))], np.r_[k, u]))
        known.append(k), unknown.append(u)
    known, unknown = np.concatenate(known), np.concatenate(unknown)
    result = {"mean": float(np.mean(accuracy)), "ci95": _ci95(accuracy),
              "auroc": float(np.mean(auroc)), "auroc_ci95": _ci95(auroc),
              "auroc_pooled": roc_auc(np.r_[np.ones(len(known)), np.zeros(len(unknown))], np.r_[known, unknown]),
              "ways": int(ways), "shots": int(shots), "episodes": int(episodes)}
    if threshold is not None:
        result.update(threshold=float(threshold), known_accepted=float(np.mean(known >= threshold)),
                      unknown_rejected=float(np.mean(unknown < threshold)))
    return result


def calibrate(scorer, embeddings, labels, shots, accept=KNOWN_ACCEPTED, ways=CALIBRATION_WAYS,
              episodes=CALIBRATION_EPISODES, seed=EVAL_SEED):
    """The P(same) threshold below which a query is answered "none of these classes": simulated
    open episodes over the given (test) images of the training classes, some classes' exemplars
    withheld, and the threshold that accepts `accept` of the known queries. Returns it with what
    it did there; None where the classes are too few (2) or too small (shots + 1 images) for
    an episode."""
    counts = np.unique(labels, return_counts=True)[1]
    ways, shots = min(ways, len(counts) // 2), min(shots or CALIBRATION_SHOTS, counts.min() - 1)
    if ways < 1 or shots < 1:
        return None
    known, unknown = [], []
    for _, k, u in open_scores(scorer, embeddings, labels, ways, shots, episodes, seed):
        known.append(k), unknown.append(u)
    known, unknown = np.concatenate(known), np.concatenate(unknown)
    threshold = float(np.quantile(known, 1 - accept))
    return {"threshold": threshold, "promise": f"accepts {100 * accept:.0f}% of known queries",
            "known_accepted": float(np.mean(known >= threshold)),
            "unknown_rejected": float(np.mean(unknown < threshold)),
            "auroc": roc_auc(np.r_[np.ones(len(known)), np.zeros(len(unknown))], np.r_[known, unknown]),
            "ways": int(ways), "shots": int(shots), "episodes": int(episodes), "classes": int(len(counts))}
