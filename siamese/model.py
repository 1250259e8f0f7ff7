"""The network: a conv branch shared by two inputs, L1 distance, and a Dense sigmoid head.

`build_siamese` is the artifact users load: built-in layers only (|a - b| is the maximum of
a - b and b - a), so its JSON loads with plain `keras.models.model_from_json` anywhere.
`PairTrainer` trains the same branch and head on every pair inside a batch: each image is
embedded once per step and a batch of B images gives B(B-1)/2 pair scores.
"""
import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from . import stage as metric_stage
from .data import IMAGE_SIZE, image_shape
from .recipe import identity_loss

# The branch follows airbench (Keller Jordan's CIFAR-10 speed records): a frozen 2x2 conv that
# whitens image patches, then three blocks of conv -> 2x2 max-pool -> BatchNorm -> GELU -> conv
# -> BatchNorm -> GELU, a global max-pool, and here a linear map to the embedding. BatchNorm has
# no learned scale (the next conv's weights carry it). WIDTHS are airbench94's and so is the default
# WIDTH; --width scales them. A step at width 1 costs about 2.2x one at 0.5 on a 2-core CPU, and
# 10 epochs of it beat 20 of width 0.5 (photos: +3.3 top-1, +1.4 at one shot on new classes, in
# 1.1x the training time; docs/benchmarks.md, "Width 1 by default"). The old branch (a stride-2 stem and a Dense layer
# on the flattened 4x4 map, 1.6 M of its 1.85 M weights) overfit 100 classes past 5 minutes.
WIDTHS = (64, 256, 256)
WIDTH = 1.0
DEPTH = 2              # 3x3 convs per block (airbench94's two); --depth adds more after the pool
WHITEN = 12            # 2x2x3 patch dimensions: the whitening conv gives each eigenvector and its negative
# airbench whitens every 2x2 patch (stride 1, 31x31 maps); on a CPU the first block's convs at that
# size cost most of a step. Non-overlapping patches (stride 2, 16x16 maps, a lossless change of
# basis of the image) trained 2.6x the images/s at width 0.5, and side by side at equal CPU time it
# scored 6 points higher top-1 (docs/benchmarks.md, "The frontier branch").
WHITEN_STRIDE = 2
EMBED_DIM = 128
# Moving statistics forget their start in ~20 steps at 0.9, ~200 at the default 0.99: a
# short CPU run of a few hundred steps would otherwise evaluate on half-initial statistics.
BN_MOMENTUM = 0.9
# The embedding ends on a sphere of radius sqrt(EMBED_DIM) (unit length, then scaled so each
# coordinate is about +-1 and the head's weights start at a useful size). On a sphere the L1
# distance ranks neighbours within half a point of the cosine, every class's exemplars count
# alike however far from the origin they fall, and the identification softmax below is a cosine
# classifier. With the tied head and prototypes, photos' closed-set top-1 on 100 classes went
# from 21% to 39% at 5 minutes; characters keep the free embedding (their recipe was measured
# with it: docs/benchmarks.md, "100 classes of photos"). Both are built-in layers: the
# JSON still loads with plain model_from_json. NORMALIZE is the default of build_branch; training
# sets it from --embedding.
NORMALIZE = True


def widths(width=WIDTH):
    """The three blocks' channels at --width `width` (1: airbench94's 64/256/256)."""
    return tuple(max(8, int(round(w * width / 8)) * 8) for w in WIDTHS)


def _bn_gelu(x):
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, scale=False)(x)
    return layers.Activation("gelu")(x)


def _block(x, filters, depth=DEPTH):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = _bn_gelu(layers.MaxPooling2D()(x))
    for _ in range(depth - 1):
        x = _bn_gelu(layers.Conv2D(filters, 3, padding="same", use_bias=False)(x))
    return x


def build_branch(width=WIDTH, embed_dim=EMBED_DIM, normalize=NORMALIZE, size=IMAGE_SIZE, depth=DEPTH):
    """Image (raw 0..255 pixels, size x size) -> embedding; with `normalize`, embeddings of length
    sqrt(embed_dim). The whitening conv starts random and frozen: `whiten` sets it from the
    training images (training does), so that any caller gets the default branch with no data."""
    image = keras.Input(image_shape(size), name="image")
    x = layers.Rescaling(1 / 255)(image)
    x = layers.Conv2D(2 * WHITEN, 2, strides=WHITEN_STRIDE, trainable=False, name="whiten")(x)
    x = layers.Activation("gelu")(x)
    for filters in widths(width):
        x = _block(x, filters, depth)
    x = layers.GlobalMaxPooling2D()(x)
    embedding = layers.Dense(embed_dim)(x)
    if normalize:
        embedding = layers.Rescaling(embed_dim ** 0.5)(layers.UnitNormalization()(embedding))
    return keras.Model(image, embedding, name="branch")


def whiten(branch, images, samples=2000, eps=5e-4):
    """Set the frozen first conv to whiten 2x2 patches of `images` (uint8): each filter an
    eigenvector of the patch covariance over sqrt(eigenvalue + eps), and its negative, with the
    mean patch folded into the bias. Inputs with decorrelated, equal-variance channels let the
    first trained conv learn at one rate in every direction (airbench: 21 epochs to 94% instead
    of 34). `eps` is relative to the mean eigenvalue."""
    layer = branch.get_layer("whiten")
    x = np.asarray(images[:samples], np.float32) / 255
    (h, w, c), (sy, sx) = x.shape[1:], layer.strides
    patches = np.concatenate([x[:, i:i + h - 1:sy, j:j + w - 1:sx] for i in (0, 1) for j in (0, 1)], axis=-1)
    patches = patches.reshape(-1, 4 * c)                                # (i, j, channel): the kernel's order
    mean = patches.mean(0)
    centred = patches - mean
    values, vectors = np.linalg.eigh(centred.T @ centred / len(centred))
    values, vectors = values[::-1], vectors[:, ::-1]                    # largest first
    scaled = vectors / np.sqrt(values + eps * values.mean())
    kernel = np.concatenate([scaled, -scaled], axis=1)                  # (12, 24)
    layer.kernel.assign(kernel.reshape(layer.kernel.shape))
    layer.bias.assign(-mean @ kernel)


def build_siamese(branch=None):
    """Two named inputs -> shared branch -> |a - b| -> Dense(1, sigmoid): P(same class)."""
    branch = branch or build_branch()
    left = keras.Input(branch.input_shape[1:], name="left")
    right = keras.Input(branch.input_shape[1:], name="right")
    a, b = branch(left), branch(right)
    l1 = layers.Maximum(name="l1")([layers.Subtract()([a, b]), layers.Subtract()([b, a])])
    same = layers.Dense(1, activation="sigmoid", name="head")(l1)
    return keras.Model({"left": left, "right": right}, same, name="siamese")


def parts(siamese):
    """The shared branch and the head of a (possibly reloaded) siamese model."""
    return siamese.get_layer("branch"), siamese.get_layer("head")


def image_size(model):
    """The side in pixels a siamese model or its branch takes, from its own input: every reader
    of images for a saved model sizes them so (a model saved before --image-size reads 32)."""
    branch = model.get_layer("branch") if model.name != "branch" else model
    return int(branch.input_shape[1])


def pair_logits(embeddings, head):
    """Logits of the head for every (i, j) pair of a batch of embeddings: (B, B)."""
    l1 = ops.abs(ops.expand_dims(embeddings, 1) - ops.expand_dims(embeddings, 0))
    return ops.squeeze(ops.matmul(l1, head.kernel), -1) + head.bias


def _pair_masks(labels):
    labels = ops.reshape(labels, (-1,))
    same = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0))
    n = ops.shape(labels)[0]
    upper = ops.triu(ops.ones((n, n), dtype="bool"), k=1)   # each unordered pair once
    return same, ops.cast(same & upper, "float32"), ops.cast(~same & upper, "float32")


def _balanced_mean(values, pos, neg):
    """Mean over same pairs and mean over different pairs, weighted equally."""
    pos_mean = ops.sum(values * pos) / ops.maximum(ops.sum(pos), 1.0)
    neg_mean = ops.sum(values * neg) / ops.maximum(ops.sum(neg), 1.0)
    return 0.5 * (pos_mean + neg_mean)


def pair_loss(logits, labels):
    """Binary cross-entropy on same/different over all pairs, same and different weighted 1:1."""
    same, pos, neg = _pair_masks(labels)
    bce = ops.binary_crossentropy(ops.cast(same, "float32"), logits, from_logits=True)
    return _balanced_mean(bce, pos, neg)


def pair_accuracy(logits, labels):
    """Balanced accuracy of `score > 0.5` over all pairs."""
    same, pos, neg = _pair_masks(labels)
    return _balanced_mean(ops.cast(ops.equal(logits > 0, same), "float32"), pos, neg)


class PairTrainer(keras.Model):
    """Wraps a siamese model for `fit`: x = a batch of images, y = their class indices 0..C-1.

    With id_weight > 0 a softmax over the C training classes sits on the embedding during
    training only (DeepID2's identification signal beside the verification one): cross-entropy
    asks every embedding to tell all C classes apart, not only the pairs one batch holds. With
    `cosine` (for embeddings on a sphere) it is a cosine classifier, scaled cosine to one learned
    direction per class, else a Dense layer. It is not part of the siamese model: the saved
    artifact is unchanged.

    With `episodes` (a run with a metric stage), `stage` is the stage's switch (siamese/stage.py),
    set per step by stage.MetricStage: while it is on, episodes scored by the head join the losses."""

    def __init__(self, siamese, classes=0, id_weight=0.0, head="free", cosine=True, label_smoothing=0.0,
                 episodes=False, stage_score="head", pair_loss="always", **kwargs):
        super().__init__(**kwargs)
        self.siamese = siamese  # tracked, so checkpoints hold the branch and head weights
        self.branch, self.head = parts(siamese)
        if head != "free":
            # Left free, about half of the head's weights turned positive: a pairing of
            # embedding and head that fits the training classes but is no distance for classes
            # never seen. Tied, every |a_i - b_i| gets the same weight <= 0: P(same) falls with
            # the L1 distance, whatever the classes. On Omniglot's unseen alphabets that was
            # worth 24 points, on new classes of photos 7 (docs/benchmarks.md, "One-shot
            # transfer", "100 classes of photos"); with prototypes and the identification
            # softmax it no longer costs closed-set accuracy, so it is the default.
            # Set on the variable, not the layer, so the saved JSON stays built-in layers only.
            self.head.kernel.constraint = _tied
            self.head.kernel.assign(ops.full(self.head.kernel.shape, -1.0 / self.head.kernel.shape[0]))
        self.id_weight, self.label_smoothing = id_weight, label_smoothing
        self.identity = None
        if id_weight:
            self.identity = (CosineClassifier(classes, name="identity") if cosine
                             else layers.Dense(classes, name="identity"))
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
        self.episodes, self.stage = episodes, metric_stage.switch()
        # pair_loss="stage": the pair loss only in the metric stage, so the first stage trains
        # the identification softmax alone (the peer's loss), the stage then the Siamese losses.
        self.stage_score, self.pair_in_stage_only = stage_score, pair_loss == "stage"

    def call(self, images, training=False):
        """{"pairs": (B, B) pair logits, "embeddings": (B, D)[, "classes": identification logits]}:
        the embeddings too, for the metric stage's prototypes."""
        embeddings = self.branch(images, training=training)
        out = {"pairs": pair_logits(embeddings, self.head), "embeddings": embeddings}
        if self.identity:
            out["classes"] = self.identity(embeddings)
        return out

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        def identification():
            if not self.identity:
                return ops.zeros(())
            return self.id_weight * identity_loss(y, y_pred["classes"], self.label_smoothing)

        def episodes():
            return metric_stage.episodic_loss(y_pred["embeddings"], y, self.head, self.stage_score)

        # The stage adds the episodes. Meta-Baseline drops its classifier there, but without the
        # identification softmax the embedding lost 2-3 points on held-out classes (docs/benchmarks.md,
        # "Metric stage"); the pair loss stays because the episodes' softmax ignores the head's
        # bias, which P(same) = 0.5 needs calibrated. Times the switch, not a cond: XLA cannot
        # compile a cond's gradient here (CI, TF 2.21); runs without a stage trace no episodes.
        pairs = pair_loss(y_pred["pairs"], y)
        loss = (self.stage * pairs if self.pair_in_stage_only else pairs) + identification()
        if self.episodes:
            loss = loss + self.stage * episodes()
        # Under tf.distribute each replica's loss is summed into the gradient: scale it.
        return loss / tf.distribute.get_strategy().num_replicas_in_sync

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.accuracy_tracker.update_state(pair_accuracy(y_pred["pairs"], y))
        results = self.get_metrics_result()
        if _multi_worker(tf.distribute.get_strategy()):
            # Keras then averages each step's values across workers with
            # strategy.reduce("MEAN", value, axis=0), which rejects scalars; shape (1,) reduces
            # to the same scalar.
            results = {name: ops.reshape(value, (1,)) for name, value in results.items()}
        return results

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if not _multi_worker(self.distribute_strategy):
            return super()._maybe_symbolic_build(iterator, data_batch)
        # Keras all-reduces a first data batch here, only to trace an unbuilt model, and that
        # fails across workers. train.py builds the model before fit; what is left to build
        # (the optimizer's variables) needs no data.
        with self.distribute_strategy.scope():
            self._symbolic_build()


class CosineClassifier(layers.Layer):
    """Training only: logits = scale * cos(embedding, w_c), one direction w_c per class and one
    learned scale (NormFace). Its logits do not grow with the embedding's length, so it trains
    the directions the exemplar scoring compares."""

    def __init__(self, classes, scale=10.0, **kwargs):
        super().__init__(**kwargs)
        self.classes, self.initial_scale = classes, scale

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.classes), initializer="glorot_uniform", name="w")
        self.scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.initial_scale),
                                     name="scale")

    def call(self, x):
        x = x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-6)
        w = self.w / ops.maximum(ops.norm(self.w, axis=0, keepdims=True), 1e-6)
        return self.scale * ops.matmul(x, w)


def _tied(w):
    return ops.minimum(ops.mean(w), 0.0) * ops.ones_like(w)


def _multi_worker(strategy):
    """True in a cluster of several workers: there, Keras 3's `fit` fails in two places
    (keras-team/keras#20585) that PairTrainer sidesteps. The same test as Keras' own."""
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())
