"""A 2-D map of embeddings: exact t-SNE (van der Maaten & Hinton 2008) in NumPy, on a sample.

scikit-learn's TSNE would be the well-kept choice, but it brings scikit-learn and SciPy (about
100 MB) for one picture; exact t-SNE on the at most MAX_POINTS points a readable map shows is
O(n^2) per step and takes seconds in NumPy. Initialised from PCA, so the same points give the
same map.
"""
import numpy as np

MAX_POINTS = 800    # 7-13 s on the busy 2-core VM (1,000: 22 s); a map of more is no easier to read
PERPLEXITY = 30.0
STEPS, EXAGGERATED = 500, 100      # steps in all; the first ones with the clusters' pull x 12


MAX_CLASSES = 20                   # beyond this many colours, classes cannot be told apart


def sample(labels, max_points=MAX_POINTS, max_classes=MAX_CLASSES, seed=0):
    """Sorted indices of at most max_points images of at most max_classes classes, both drawn
    at random (seeded)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    if len(classes) > max_classes:
        classes = rng.choice(classes, max_classes, replace=False)
    keep = np.flatnonzero(np.isin(labels, classes))
    if len(keep) > max_points:
        keep = rng.choice(keep, max_points, replace=False)
    return np.sort(keep)


def pca(x, dims=2):
    x = np.asarray(x, np.float64) - np.mean(x, 0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:dims].T


def _affinities(x, perplexity):
    """Symmetric P of t-SNE: per point, a Gaussian whose width gives the wanted perplexity
    (binary search on its precision), then averaged with its transpose."""
    n = len(x)
    d = np.square(x[:, None, :] - x[None, :, :]).sum(-1)
    target = np.log(min(perplexity, (n - 1) / 3))
    p = np.zeros((n, n))
    for i in range(n):
        lo, hi, beta = 0.0, np.inf, 1.0
        di = np.delete(d[i], i)
        for _ in range(60):
            w = np.exp(-(di - di.min()) * beta)
            s = w.sum()
            entropy = np.log(s) + beta * np.sum((di - di.min()) * w) / s
            if abs(entropy - target) < 1e-5:
                break
            if entropy > target:
                lo, beta = beta, beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi, beta = beta, (beta + lo) / 2
        p[i, np.arange(n) != i] = w / s
    p = (p + p.T) / (2 * n)
    return np.maximum(p, 1e-12)


def tsne(x, perplexity=PERPLEXITY, steps=STEPS, seed=0):
    """(n, 2) t-SNE coordinates of the rows of x."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if n < 4:
        return pca(x) if n > 1 else np.zeros((n, 2))
    p = _affinities(x, perplexity).astype(np.float32)   # float32 steps: twice as fast, the same map to the eye
    y = pca(x)
    y = (1e-4 * y / max(np.std(y[:, 0]), 1e-12) + 1e-8 * np.random.default_rng(seed).normal(size=y.shape)).astype(
        np.float32)
    velocity, gains = np.zeros_like(y), np.ones_like(y)
    for step in range(steps):
        sq = np.square(y).sum(1)
        q_num = 1 / (1 + np.maximum(sq[:, None] + sq[None, :] - 2 * y @ y.T, 0))
        np.fill_diagonal(q_num, 0)
        q = np.maximum(q_num / q_num.sum(), 1e-12)
        pull = (12 if step < EXAGGERATED else 1) * p
        # sum_j w_ij (y_i - y_j), as matrix products: no (n, n, 2) array
        w = (pull - q) * q_num
        grad = 4 * (w.sum(1)[:, None] * y - w @ y)
        momentum = 0.5 if step < EXAGGERATED else 0.8
        gains = np.where(np.sign(grad) != np.sign(velocity), gains + 0.2, gains * 0.8).clip(0.01)
        velocity = momentum * velocity - 200.0 * gains * grad
        y = y + velocity
        y -= y.mean(0)
    return y
