"""The one scorer and the numbers made from it.

Every image is embedded once (`merged_embedding`: the branch over the test-time views the model
was trained for; the export serves the same function); pair scores are the head applied to the
L1 of cached embeddings, in chunks that bound memory. A class is scored through its prototype:
the mean of its exemplars' embeddings. Training's final evaluation, Test_Cifar-100.py, the
few-shot episodes and the benchmark all score through `Scorer`.
"""
import numpy as np
import tensorflow as tf

from . import pairs
from .data import IMAGE_SIZE
from .model import image_size, parts

EVAL_SEED = 1234          # fixed, so runs with different --seed are compared on the same pairs
VERIFICATION_PAIRS = 2000
KNOWN_ACCEPTED = 0.9      # the rejection threshold's promise, on the training classes (docs/design.md)
CALIBRATION_WAYS, CALIBRATION_EPISODES = 5, 300
CALIBRATION_SHOTS = 5     # exemplars per known class when training scores all of them (--shots all)
CHUNK_FLOATS = 1 << 23    # floats in one (queries, exemplars, dim) L1 block: 32 MB


class Scorer:
    """`flip`: test-time augmentation, each image embedded as the merge of its own embedding and
    its mirror image's (for data where a mirror image is the same class: training says so);
    `shifts`: and of both moved by a pixel (`views`). `size`: the side of the images the model
    takes; every reader of images for it reads them so."""

    def __init__(self, siamese, batch_size=None, flip=False, shifts=False):
        self.branch, self.head = parts(siamese)
        self.size = image_size(siamese)
        # 200 images of 32x32: a batch's activations stay ~100 MB, at any size.
        batch_size = batch_size or max(8, round(200 * (IMAGE_SIZE / self.size) ** 2))
        self.batch_size, self.flip, self.shifts = batch_size, flip, shifts
        self._class_chunk = tf.function(self._class_chunk_eager, reduce_retracing=True)

    def embed(self, images):
        """uint8 (N, S, S, 3) -> float32 (N, D): one branch pass per image and view (`views`)."""
        return embed(self.branch, images, self.batch_size, self.flip, self.shifts)

    def pair_scores(self, a, b):
        """P(same) for aligned embedding pairs a[i], b[i]."""
        return np.concatenate([pair_score(self.head, a[i:i + 65536], b[i:i + 65536]).numpy()
                               for i in range(0, len(a), 65536)]) if len(a) else np.zeros(0)

    def _class_chunk_eager(self, queries, prototypes):
        # The head's logit, not its sigmoid: the class confidence is a softmax of these, and
        # P(same) near 1 would lose them to float32 rounding. sigmoid(logit) is the head's output.
        l1 = tf.abs(queries[:, None, :] - prototypes[None, :, :])    # (q, C, D)
        return tf.matmul(l1, self.head.kernel)[..., 0] + self.head.bias

    def _logits(self, queries, references):
        """The head's logits of every query with every reference embedding, (Q, R), in chunks."""
        references = tf.constant(references, tf.float32)
        step = max(1, CHUNK_FLOATS // max(1, references.shape[0] * references.shape[1]))
        for i in range(0, len(queries), step):
            yield i, self._class_chunk(tf.constant(queries[i:i + step], tf.float32), references).numpy()

    def class_logits(self, queries, exemplars, exemplar_labels, learned=None):
        """(classes, logits[q, k]): the head's logit of P(same) of every query with the prototype
        of class id classes[k] (`learned`: as in `class_prototypes`)."""
        classes, prototypes = class_prototypes(exemplars, exemplar_labels, learned)
        logits = [chunk for _, chunk in self._logits(queries, prototypes)]
        return classes, np.concatenate(logits) if logits else np.zeros((0, len(classes)), np.float32)

    def class_scores(self, queries, exemplars, exemplar_labels, learned=None):
        """P(same) of every query with each class's prototype (`learned`: as in `class_prototypes`).

        Returns (classes, scores) with scores[q, k] for class id classes[k]."""
        classes, logits = self.class_logits(queries, exemplars, exemplar_labels, learned)
        return classes, sigmoid(logits)

    def nearest(self, queries, references, k, leave_one_out=False):
        """(indices, P(same)) of the k references with the highest P(same) for each query, best
        first, each (Q, k). With `leave_one_out`, queries are the references themselves and a
        query never finds itself."""
        k = min(k, len(references) - bool(leave_one_out))
        found, scores = [np.zeros((0, k), np.int64)], [np.zeros((0, k), np.float32)]
        for i, logits in self._logits(queries, references):
            if leave_one_out:
                logits[np.arange(len(logits)), i + np.arange(len(logits))] = -np.inf
            best = np.argsort(-logits, axis=1, kind="stable")[:, :k]
            found.append(best), scores.append(np.take_along_axis(logits, best, 1))
        return np.concatenate(found), sigmoid(np.concatenate(scores))


def sigmoid(logits):
    """The head's activation, in NumPy: P(same) from its logits."""
    return (1 / (1 + np.exp(-np.asarray(logits, np.float64)))).astype(np.float32)


def views(x, flip=False, shifts=False):
    """Test-time views of a float batch and their weights: the batch itself, with `flip` its
    mirror image, with `shifts` each of those moved by one pixel down-right and up-left (reflect-
    padded) at half the weight: airbench's six views."""
    out, weights = [x], [2.0]
    if shifts:
        padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
        out += [padded[:, :-2, :-2], padded[:, 2:, 2:]]
        weights += [1.0, 1.0]
    if flip:
        out += [tf.reverse(v, [2]) for v in out]
        weights += weights
    return out, weights


def merged_embedding(branch, x, flip=False, shifts=False):
    """The embedding every score is made from, of a float batch (n, 32, 32, 3), pixels 0..255:
    one branch pass, or with `flip` / `shifts` the weighted merge of the embeddings of the
    image's `views` (as `class_prototypes` merges a class's exemplars: the mean, at the views'
    mean length). TensorFlow ops only, so that the export traces this very function into its
    SavedModel: a service built on it embeds as this tool does."""
    batch, weights = views(x, flip, shifts)
    if len(batch) == 1:
        return branch(x, training=False)
    e = tf.stack([branch(v, training=False) for v in batch])   # (views, n, D)
    w = tf.constant(weights, tf.float32) / sum(weights)
    mean = tf.tensordot(w, e, 1)
    length = tf.tensordot(w, tf.norm(e, axis=2), 1)
    return mean * (length / tf.maximum(tf.norm(mean, axis=1), 1e-12))[:, None]


def pair_score(head, a, b):
    """P(same) of aligned embedding batches a[i], b[i]: the head on their L1 difference."""
    return head(tf.abs(a - b))[:, 0]


def embed(branch, images, batch_size=200, flip=False, shifts=False):
    """`merged_embedding`s of uint8 images, cast to float one batch at a time (a float copy of
    them all would cost 4x their memory)."""
    ds = (tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
          .map(lambda x: tf.cast(x, tf.float32)).prefetch(2))
    out = [merged_embedding(branch, x, flip, shifts).numpy() for x in ds]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, branch.output.shape[-1]), np.float32)


def class_prototypes(exemplars, labels, learned=None):
    """(class ids, one embedding per class): the mean of the class's exemplar embeddings, rescaled
    to their mean length. The mean of points on a sphere lies inside it; put back on it, the
    prototype is compared at the distances training saw. With 1 exemplar it is that exemplar.
    Averaging embeddings scored higher than averaging P(same) over the exemplars (5-shot episodes
    and 100-way top-1 on photos: docs/benchmarks.md, "100 classes of photos").

    `learned` ({class id: (D,) vector}): classes training learned a direction for (the cosine
    identification softmax's weights, artifacts.load_directions) point along it instead, at the
    same length. On 100 classes of photos that scored 3 points of top-1 above all of a class's
    training images as exemplars (docs/benchmarks.md, "Learned class directions")."""
    classes, inverse = np.unique(labels, return_inverse=True)
    exemplars = np.asarray(exemplars, np.float32)
    counts = np.bincount(inverse, minlength=len(classes)).astype(np.float32)[:, None]
    sums = np.zeros((len(classes), exemplars.shape[1]), np.float32)
    np.add.at(sums, inverse, exemplars)
    lengths = np.bincount(inverse, np.linalg.norm(exemplars, axis=1), len(classes))[:, None] / counts
    means = sums / counts
    scale = lengths / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    prototypes = (means * scale).astype(np.float32)
    for k, c in enumerate(classes.tolist() if learned else ()):
        if c in learned:
            prototypes[k] = lengths[k, 0] * unit(np.asarray(learned[c], np.float32)[None])[0]
    return classes, prototypes


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


def test_metrics(scorer, train_x, train_y, test_emb, test_y, shots, learned=None):
    """Verification on fixed balanced test pairs, and k-way classification of every test image
    (given as its embedding) against the prototypes of the first `shots` training images of each
    class (None: all of them). Returns (metrics, (same, pair scores) for the ROC, (classes, class
    logits) of every test image for the class confidence).

    `learned` ({class id: vector}, `class_prototypes`): the classes' learned directions, which then
    make the prototypes, as prediction scores them; "top1_exemplars" is the top-1 by the exemplars
    alone, beside it."""
    left, right, same = pairs.verification_pairs(test_y, VERIFICATION_PAIRS, EVAL_SEED)
    pair_scores = scorer.pair_scores(test_emb[left], test_emb[right])
    ex_idx, ex_labels = pairs.exemplar_indices(train_y, shots)
    ex_emb = scorer.embed(train_x[ex_idx])
    classes, logits = scorer.class_logits(test_emb, ex_emb, ex_labels, learned)
    ranked = top_k(classes, logits, min(5, len(classes)))
    result = {
        "verification_accuracy": float(np.mean((pair_scores > 0.5) == same)),
        "roc_auc": roc_auc(same, pair_scores),
        "top1": float(np.mean(ranked[:, 0] == test_y)),
        "top5": float(np.mean((ranked == test_y[:, None]).any(1))),
        "classes": int(len(classes)),
        "test_images": int(len(test_y)),
        "learned_classes": int(len(set(learned or ()) & set(classes.tolist()))),
    }
    if learned:
        by_exemplars, plain = scorer.class_logits(test_emb, ex_emb, ex_labels)
        result["top1_exemplars"] = float(np.mean(by_exemplars[plain.argmax(1)] == test_y))
    return result, (same, pair_scores), (classes, logits)


def unit(v):
    """Rows of `v` at unit length (a zero row stays zero): the benchmark's cosine scorer uses it too."""
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


RECALL_AT = (1, 5)


def retrieval(scorer, embeddings, labels):
    """Recall@1, Recall@5 and MAP@R (Musgrave et al. 2020, "A Metric Learning Reality Check")
    of every image against all the others, ranked by P(same); images alone in their class have
    nothing to find and are left out."""
    labels = np.asarray(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    relevant = counts[inverse] - 1
    if len(labels) < 2 or not relevant.any():
        return None
    found, _ = scorer.nearest(embeddings, embeddings, max(max(RECALL_AT), relevant.max()), leave_one_out=True)
    return ranking_metrics(labels[found], labels, relevant)


def ranking_metrics(found_labels, labels, relevant):
    """The retrieval numbers from each query's ranked neighbours' labels (Q, K), its own label and
    R, how many of the others share it (K >= every R). Recall@k: the share of queries with one
    of their class in the first k. MAP@R: per query, the mean over its first R ranks of the
    precision at each rank where the neighbour is of its class (0 where it is not)."""
    hits = np.asarray(found_labels) == np.asarray(labels)[:, None]
    keep = relevant > 0
    hits, relevant = hits[keep], relevant[keep]
    ranks = np.arange(1, hits.shape[1] + 1)
    precision = np.cumsum(hits, 1) / ranks
    within = ranks[None] <= relevant[:, None]
    average_precision = (precision * hits * within).sum(1) / relevant
    result = {f"recall@{k}": float(hits[:, :k].any(1).mean()) for k in RECALL_AT}
    result.update({"map@r": float(average_precision.mean()), "queries": int(len(relevant))})
    return result


CONFIDENCE_BINS = 15     # as Guo et al. 2017 ("On Calibration of Modern Neural Networks")


def class_probabilities(logits, temperature):
    """P(class | query): a softmax over the classes of the head's logits divided by the temperature."""
    z = np.asarray(logits, np.float64) / temperature
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def fit_temperature(logits, truth):
    """The temperature T that minimizes the negative log-likelihood of softmax(logits / T) at
    the true classes `truth` (column indices). The NLL is convex in 1/T, so unimodal in log T:
    a golden-section search over T from 1e-3 to 1e3 finds its minimum."""
    logits = np.asarray(logits, np.float64)
    rows = np.arange(len(truth))

    def nll(log_t):
        z = logits / np.exp(log_t)
        top = z.max(1)
        return np.mean(top + np.log(np.exp(z - top[:, None]).sum(1)) - z[rows, truth])

    lo, hi = np.log(1e-3), np.log(1e3)
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return float(np.exp((lo + hi) / 2))


def reliability(confidence, correct, bins=CONFIDENCE_BINS):
    """Expected calibration error over equal-width confidence bins, and per bin (lower edge,
    mean confidence, accuracy, count) for the reliability diagram."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            conf, acc = confidence[inside].mean(), correct[inside].mean()
            ece += inside.mean() * abs(acc - conf)
            table.append((b / bins, float(conf), float(acc), int(inside.sum())))
    return float(ece), table


def calibrate_confidence(classes, logits, labels, seed=EVAL_SEED):
    """The temperature of P(class | query), fitted on a seeded half of the given (test) images'
    class logits and checked on the other half: its expected calibration error there, and that of
    the best class's P(same) read as a confidence, as the page showed it. Returns (what is saved
    beside the model, the two reliability tables); None where there are too few images."""
    if len(classes) < 2 or len(labels) < 4 or not np.isin(labels, classes).all():
        return None, None
    truth = np.searchsorted(classes, labels)
    order = np.random.default_rng(seed).permutation(len(labels))
    fit, check = order[:len(order) // 2], order[len(order) // 2:]
    temperature = fit_temperature(logits[fit], truth[fit])
    right = logits[check].argmax(1) == truth[check]
    probability = class_probabilities(logits[check], temperature).max(1)
    ece, table = reliability(probability, right)
    ece_p_same, table_p_same = reliability(sigmoid(logits[check].max(1)), right)
    saved = {"temperature": temperature, "ece": ece, "ece_p_same": ece_p_same, "bins": CONFIDENCE_BINS,
             "fitted_on": int(len(fit)), "checked_on": int(len(check)), "classes": int(len(classes))}
    return saved, {"P(class)": table, "P(same) of the best class": table_p_same}


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


def open_scores(scorer, embeddings, labels, ways, shots, episodes, seed=EVAL_SEED, learned=None):
    """The raw material of open-set numbers, per open episode (pairs.open_episodes): whether each
    known query got its class, and every query's best class score (known queries, unknown).
    `learned`: the known classes are scored by their learned directions (`class_prototypes`)."""
    for support, known, unknown in pairs.open_episodes(labels, ways, shots, episodes, seed=seed):
        query = np.concatenate([known, unknown])
        ids, scores = scorer.class_scores(embeddings[query], embeddings[support], labels[support], learned)
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
              episodes=CALIBRATION_EPISODES, seed=EVAL_SEED, learned=None):
    """The P(same) threshold below which a query is answered "none of these classes": simulated
    open episodes over the given (test) images of the training classes, some classes' exemplars
    withheld, and the threshold that accepts `accept` of the known queries. Returns it with what
    it did there; None where the classes are too few (2) or too small (shots + 1 images) for
    an episode. `learned`: the known classes scored by their learned directions, as prediction
    scores the training classes with them."""
    counts = np.unique(labels, return_counts=True)[1]
    ways, shots = min(ways, len(counts) // 2), min(shots or CALIBRATION_SHOTS, counts.min() - 1)
    if ways < 1 or shots < 1:
        return None
    known, unknown = [], []
    for _, k, u in open_scores(scorer, embeddings, labels, ways, shots, episodes, seed, learned):
        known.append(k), unknown.append(u)
    known, unknown = np.concatenate(known), np.concatenate(unknown)
    threshold = float(np.quantile(known, 1 - accept))
    return {"threshold": threshold, "promise": f"accepts {100 * accept:.0f}% of known queries",
            "known_accepted": float(np.mean(known >= threshold)),
            "unknown_rejected": float(np.mean(unknown < threshold)),
            "auroc": roc_auc(np.r_[np.ones(len(known)), np.zeros(len(unknown))], np.r_[known, unknown]),
            "ways": int(ways), "shots": int(shots), "episodes": int(episodes), "classes": int(len(counts))}
