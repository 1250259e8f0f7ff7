"""Figures written as PNG next to the model (headless: the Agg backend, no screen needed)."""
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from . import artifacts  # noqa: E402


def _save(fig, path):
    """Render in memory, then write atomically: never a half-written PNG, and a full disk is
    one line (UserError), not a traceback."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    artifacts.write_file(path, buffer.getvalue(), fix="free some space, or pass --no-plots")


def training_curves(history, path):
    epochs = range(1, len(history["loss"]) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, history["loss"], marker="o")
    ax1.set(title="training loss (pair + id-weight x identification)", xlabel="epoch", ylabel="loss")
    ax2.plot(epochs, history["accuracy"], marker="o", color="tab:green")
    ax2.set(title="pair accuracy (balanced)", xlabel="epoch", ylabel="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # epochs are whole numbers
    _save(fig, path)


def roc(fpr, tpr, auc, path):
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"siamese (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="chance")
    ax.set(title="verification ROC, test pairs", xlabel="false positive rate",
           ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)


MAX_DRAWN = 64   # a grid of hundreds takes seconds per image row and nobody reads it


def predictions(images, predicted, true, path, right=None):
    """Grid of the first MAX_DRAWN images titled 'predicted / true', green when right, red when
    wrong (`right`, where the answer `unknown` can be right; else predicted == true). Returns how
    many it drew."""
    right = [p == t for p, t in zip(predicted, true)] if right is None else right
    images, predicted, true, right = images[:MAX_DRAWN], predicted[:MAX_DRAWN], true[:MAX_DRAWN], right[:MAX_DRAWN]
    n = len(images)
    cols = min(8, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, im, p, t, ok in zip(axes.flat, images, predicted, true, right):
        ax.imshow(im, interpolation="nearest")
        ax.set_title(f"{_fit(p)}\n({_fit(t)})", fontsize=7, color="green" if ok else "red")
    fig.suptitle("predicted (true)", fontsize=9)
    _save(fig, path)
    return n


def _fit(name, width=18):
    """A class name cut to what a grid cell's title holds (Tiny ImageNet's 'n01629819_european_fire_salamander'
    ran into its neighbours' titles): its end kept, where the words are."""
    name = str(name)
    return name if len(name) <= width else "…" + name[-(width - 1):]


MAX_CONFUSED = 15   # classes in the confusion matrix: those of the most-confused pairs


def confusion(true, predicted, path, unknown=None):
    """Counts of (true, predicted) answers for the classes of the most-confused pairs (all of them
    when there are few), rows true and columns predicted; with `unknown` (the rejection answer),
    a last column for it. Returns the classes drawn."""
    import numpy as np
    true, predicted = list(true), list(predicted)
    names = sorted(set(true) | (set(predicted) - {unknown}))
    if len(names) > MAX_CONFUSED:
        pairs = {}
        for t, p in zip(true, predicted):
            if t != p and p != unknown:
                pairs[(t, p)] = pairs.get((t, p), 0) + 1
        chosen = []
        for (t, p), _ in sorted(pairs.items(), key=lambda item: (-item[1], item[0])):
            chosen += [c for c in (t, p) if c not in chosen]
            if len(chosen) >= MAX_CONFUSED:
                break
        names = sorted(chosen[:MAX_CONFUSED]) or names[:MAX_CONFUSED]
    columns = names + ([unknown] if unknown is not None else [])
    at = {n: i for i, n in enumerate(columns)}
    counts = np.zeros((len(names), len(columns)), int)
    for t, p in zip(true, predicted):
        if t in at and at[t] < len(names) and p in at:
            counts[at[t], at[p]] += 1
    size = max(4.0, 0.45 * len(columns) + 2)
    fig, ax = plt.subplots(figsize=(size, max(3.5, 0.45 * len(names) + 2)))
    ax.imshow(counts, cmap="Blues")
    for (i, j), c in np.ndenumerate(counts):
        if c:
            ax.text(j, i, str(c), ha="center", va="center", fontsize=7,
                    color="white" if c > counts.max() / 2 else "black")
    ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true")
    some = f"the {len(names)} classes of the most-confused pairs, of {len(set(true))}" \
        if len(set(true) | set(predicted)) > len(columns) else "every class"
    ax.set_title(f"confusion: {some}", fontsize=9)
    _save(fig, path)
    return names


def embedding_map(embeddings, labels, class_names, path, title="the test images"):
    """A 2-D t-SNE map of (a sample of) the embeddings, coloured by class. Returns what was drawn, in words."""
    import numpy as np
    from . import tsne
    keep = tsne.sample(labels)
    labels = np.asarray(labels)[keep]
    xy = tsne.tsne(np.asarray(embeddings)[keep])
    classes = np.unique(labels)
    fig, ax = plt.subplots(figsize=(7.5, 6))
    colours = plt.get_cmap("tab20")
    for k, c in enumerate(classes):
        at = labels == c
        ax.scatter(xy[at, 0], xy[at, 1], s=9, color=colours(k % 20), label=class_names[int(c)])
    ax.set_xticks([]), ax.set_yticks([])
    drawn = f"t-SNE of {len(keep)} of {title}, {len(classes)} classes"
    ax.set_title(drawn, fontsize=9)
    if len(classes) <= tsne.MAX_CLASSES:
        ax.legend(fontsize=6, markerscale=1.5, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    _save(fig, path)
    return drawn


def reliability(tables, eces, path, bins):
    """Reliability diagram: accuracy against confidence per bin, one panel per confidence
    (evaluate.calibrate_confidence's tables), the diagonal being perfect calibration."""
    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 4), squeeze=False)
    for ax, (name, table) in zip(axes[0], tables.items()):
        edges = [t[0] for t in table]
        ax.bar(edges, [t[2] for t in table], width=1 / bins, align="edge", edgecolor="black", color="tab:blue",
               label="accuracy")
        ax.plot([t[1] for t in table], [t[2] for t in table], "o", color="tab:orange", ms=3, label="mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="gray")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=name, ylabel="accuracy", title=f"{name}: ECE {eces[name]:.3f}")
        ax.legend(loc="upper left", fontsize=7, framealpha=0.9)
        ax.grid(alpha=0.3)
    _save(fig, path)
