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
    ax1.set(title="pair loss (balanced BCE)", xlabel="epoch", ylabel="loss")
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
        ax.set_title(f"{p}\n({t})", fontsize=7, color="green" if ok else "red")
    fig.suptitle("predicted (true)", fontsize=9)
    _save(fig, path)
    return n
