"""The seed-style reference the benchmark compares against (not used by the product).

What the original scripts did: build same/different pairs in a Python loop into two big float
arrays, `fit` the two-input model on them, then classify by pushing every (query, exemplar)
pair through both branches. Same branch architecture and head as ours (siamese.model).
"""
import time

import keras
import numpy as np

from siamese import evaluate, pairs
from siamese.model import build_siamese
from siamese.schedule import Clock

N_PAIRS = 60_000        # pairs materialized as float32 image arrays, as the seed did
QUERY_SAMPLE = 1000     # test images classified by full-model pair scoring: slow (~3 min on
                        # 2 cores), but 200 left +-3.5 points of sampling noise in its top-1


def build_pairs(x, y, n, rng):
    """Half same-class, half different-class pairs, built one by one."""
    by_class = pairs.class_index(y)
    classes = list(by_class)
    left, right, same = [], [], []
    for i in range(n):
        a = rng.choice(classes)
        b = a if i % 2 == 0 else rng.choice([c for c in classes if c != a])
        left.append(x[rng.choice(by_class[a])].astype("float32"))
        right.append(x[rng.choice(by_class[b])].astype("float32"))
        same.append(float(a == b))
    return np.array(left), np.array(right), np.array(same, dtype="float32")


def run(ds, minutes, shots, batch_size=128, lr=1e-3, seed=0):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    start = time.monotonic()
    left, right, same = build_pairs(ds.x_train, ds.y_train, N_PAIRS, rng)
    build_seconds = time.monotonic() - start

    model = build_siamese()
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy", metrics=["accuracy"])
    remaining = max(1.0, minutes * 60 - build_seconds)
    clock = Clock(remaining)
    model.fit({"left": left, "right": right}, same, batch_size=batch_size, epochs=1000,
              callbacks=[clock], verbose=2)
    train_seconds = time.monotonic() - start

    # Evaluation the seed way: every pair through the full two-branch model.
    def full_scores(a, b):
        return model.predict({"left": a.astype("float32"), "right": b.astype("float32")},
                             batch_size=256, verbose=0)[:, 0]

    l, r, is_same = pairs.verification_pairs(ds.y_test, evaluate.VERIFICATION_PAIRS, evaluate.EVAL_SEED)
    ver = full_scores(ds.x_test[l], ds.x_test[r])
    ex_idx, ex_labels = pairs.exemplar_indices(ds.y_train, shots)
    queries = np.random.default_rng(evaluate.EVAL_SEED).choice(len(ds.y_test), QUERY_SAMPLE, replace=False)
    t0 = time.monotonic()
    per_query = []
    for q in queries:
        s = full_scores(np.repeat(ds.x_test[q:q + 1], len(ex_idx), 0), ds.x_train[ex_idx])
        per_query.append(s)
    eval_seconds = time.monotonic() - t0
    classes = np.unique(ex_labels)
    scores = np.stack([[row[ex_labels == c].mean() for c in classes] for row in per_query])
    ranked = evaluate.top_k(classes, scores, min(5, len(classes)))
    truth = ds.y_test[queries]
    steps = clock.steps
    return {
        "train_images_per_s": 2 * steps * batch_size / clock.seconds,   # two branch passes per pair
        "train_pairs_per_s": steps * batch_size / clock.seconds,
        "eval_pairs_per_s": len(queries) * len(ex_idx) / eval_seconds,
        "top1": float(np.mean(ranked[:, 0] == truth)),
        "top5": float(np.mean((ranked == truth[:, None]).any(1))),
        "verification_accuracy": float(np.mean((ver > 0.5) == is_same)),
        "roc_auc": evaluate.roc_auc(is_same, ver),
        "train_seconds": train_seconds,
        "train_steps": steps,
        "pair_build_seconds": build_seconds,
        "eval_queries": int(len(queries)),
    }
