"""Which images meet which: class-balanced training batches, fixed verification pairs, exemplars.

Everything here works on index arrays into a split; images are gathered only when a batch is
built, so no pair is ever materialized as an image array.
"""
import numpy as np

from .errors import UserError


def class_index(labels):
    """label id -> indices of that class, in file order."""
    labels = np.asarray(labels)
    return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}


def exemplar_indices(labels, shots):
    """The first `shots` indices of each class in file order (deterministic; None: all), and their labels."""
    idx = np.concatenate([ix[:shots] for ix in class_index(labels).values()])
    return idx, np.asarray(labels)[idx]


def require_shots(labels, shots):
    """--shots exemplars per class must exist in every class (one line if not); None is all."""
    if shots is None:
        return
    smallest = np.unique(labels, return_counts=True)[1].min()
    if shots > smallest:
        raise UserError(f"--shots {shots} is more than the smallest class has "
                        f"({smallest} training images); lower --shots")


class BalancedBatches:
    """P classes x M images per batch (P*M <= batch_size), so every batch has same-class pairs.

    With `coarse` (fine id -> superclass id) and hard_fraction > 0, that fraction of a batch's
    classes come in pairs from a shared superclass: negatives that are harder to tell apart.
    Batch b of epoch e depends only on (seed, e, b), so a resumed run sees the same batches.
    """

    def __init__(self, labels, batch_size, images_per_class, seed=0, coarse=None, hard_fraction=0.0):
        self.labels = np.asarray(labels)
        self.by_class = class_index(labels)
        self.classes = np.array(sorted(self.by_class))
        # P classes of at least `images_per_class` each; with few classes, more images per class.
        self.P = min(max(1, batch_size // images_per_class), len(self.classes))
        self.M = batch_size // self.P
        self.seed = seed
        self.steps = max(1, len(labels) // (self.P * self.M))
        self.hard_fraction = hard_fraction if coarse is not None else 0.0
        if self.hard_fraction:
            groups = {}
            for c in self.classes:
                groups.setdefault(coarse[int(c)], []).append(int(c))
            self.groups = [np.array(g) for g in groups.values() if len(g) >= 2]

    def _pick_classes(self, rng):
        chosen = []
        n_hard = min(int(self.P * self.hard_fraction) // 2, len(self.groups)) if self.hard_fraction else 0
        if n_hard:
            for g in rng.choice(len(self.groups), size=n_hard, replace=False):
                chosen += list(rng.choice(self.groups[g], size=2, replace=False))
        rest = np.setdiff1d(self.classes, chosen)
        return chosen + list(rng.choice(rest, size=self.P - len(chosen), replace=False))

    def batch(self, epoch, step):
        """(indices, labels) of one batch, ordered class by class."""
        rng = np.random.default_rng([self.seed, epoch, step])
        idx = [rng.choice(self.by_class[int(c)], size=self.M, replace=len(self.by_class[int(c)]) < self.M)
               for c in self._pick_classes(rng)]
        idx = np.concatenate(idx)
        return idx, self.labels[idx]


def verification_pairs(labels, n_pairs, seed):
    """A fixed, seeded, balanced set of (i, j, same) pairs: n_pairs/2 same-class, the rest not."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    by_class = class_index(labels)
    multi = [c for c, ix in by_class.items() if len(ix) >= 2]
    classes = np.array(sorted(by_class))
    n_same = n_pairs // 2
    left, right = [], []
    for c in rng.choice(multi, size=n_same):
        i, j = rng.choice(by_class[int(c)], size=2, replace=False)
        left.append(i), right.append(j)
    for _ in range(n_pairs - n_same):
        a, b = rng.choice(classes, size=2, replace=False)
        left.append(rng.choice(by_class[int(a)])), right.append(rng.choice(by_class[int(b)]))
    same = np.r_[np.ones(n_same), np.zeros(n_pairs - n_same)].astype(np.int64)
    return np.array(left), np.array(right), same


def episodes(labels, ways, shots, n, queries=15, seed=0):
    """n seeded few-shot episodes: (support indices, query indices), `ways` classes each with
    `shots` support and up to `queries` query images, support and query disjoint."""
    rng = np.random.default_rng([seed, ways, shots])
    by_class = class_index(labels)
    classes = np.array(sorted(by_class))
    for _ in range(n):
        support, query = [], []
        for c in rng.choice(classes, size=min(ways, len(classes)), replace=False):
            ix = by_class[int(c)]
            pick = rng.choice(ix, size=min(len(ix), shots + queries), replace=False)
            support.append(pick[:shots]), query.append(pick[shots:])
        yield np.concatenate(support), np.concatenate(query)


def open_episodes(labels, ways, shots, n, queries=15, seed=0):
    """n seeded open-set episodes (few-shot open-set recognition as PEELER and SnaTCHer draw
    them): (support, known queries, unknown queries) index arrays. `ways` known classes each give
    `shots` support images; `ways` more classes, disjoint from them, give no support: their
    images belong to none of the episode's classes. Every class of an episode gives the same
    number of queries, `queries` or fewer where a class is too small."""
    by_class = class_index(labels)
    classes = np.array(sorted(by_class))
    if 2 * ways > len(classes):
        raise ValueError(f"open episodes of {ways} ways need {2 * ways} classes, not {len(classes)}")
    rng = np.random.default_rng([seed, ways, shots, 2])   # 2: not the closed episodes' draws
    for _ in range(n):
        chosen = [by_class[int(c)] for c in rng.choice(classes, size=2 * ways, replace=False)]
        q = min(queries, *(len(ix) - shots for ix in chosen[:ways]), *(len(ix) for ix in chosen[ways:]))
        picks = [rng.choice(ix, size=shots + q, replace=False) for ix in chosen[:ways]]
        unknown = [rng.choice(ix, size=q, replace=False) for ix in chosen[ways:]]
        yield (np.concatenate([p[:shots] for p in picks]), np.concatenate([p[shots:] for p in picks]),
               np.concatenate(unknown))
