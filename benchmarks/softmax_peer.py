"""The softmax peer the benchmark compares against (not used by the product).

What a practitioner would train instead to label images: the same branch as ours
(siamese.model.build_branch, whitened from the training images) with a Dense softmax head, cross-entropy on shuffled batches.
Everything else is ours, so only the training signal differs: the loader, held-out split,
tf.data pipeline and augmentation, the recipe (siamese.recipe: optimizer, rate schedule, label
smoothing, weight averaging, XLA, smaller images first) and the time budget.
With --metric-stage, ours ends with a metric stage (siamese/stage.py): that is a change of
ours' loss in the last share of the run, not of its recipe (same rate schedule, same batches, same
time), so the peer keeps the whole schedule on its own cross-entropy: the stage has no
counterpart here, by design, and the peer loses no step or rate to it.

Besides its own closed-set top-1/top-5, the peer's branch is scored the way ours is: as
exemplar embeddings (cosine to each class's mean of the same K exemplars) and, with held-out
classes, on the same few-shot and open-set episodes.
"""
import functools

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from episodes import novel_episodes
from siamese import data, evaluate, model, pairs, recipe, splits, train
from siamese.pipeline import pipeline
from siamese.schedule import Clock

# Cifar-100.py's defaults for photos (batch, rate, epochs): the peer trains what ours trains, but for
# the loss. Like ours, a time budget alone has no epoch cap (EPOCHS without one).
EPOCHS = train.EPOCHS["photos"]
BATCH_SIZE = 128
LR = 2e-3


class ShuffledBatches:
    """Random batches of `batch_size` images, every image once per epoch (the tail dropped).

    The interface of siamese.pairs.BalancedBatches that siamese.pipeline uses (which feeds the
    softmax the positions of the labels in `classes`). The pipeline draws batches in parallel
    threads, so an epoch's permutation is a pure function of (seed, epoch), cached: computed
    once per epoch, not once per batch."""

    def __init__(self, labels, batch_size, seed=0):
        self.labels = np.asarray(labels)
        self.classes = np.unique(self.labels)
        self.size = min(batch_size, len(self.labels))
        self.steps = len(self.labels) // self.size
        self.seed = seed

    @functools.lru_cache(maxsize=2)   # this epoch's and, while batches overlap, the last one's
    def _order(self, epoch):
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.labels))

    def batch(self, epoch, step):
        order = self._order(epoch)
        # A copy: a slice would keep the epoch's whole permutation alive with every batch.
        idx = order[step * self.size:(step + 1) * self.size].copy()
        return idx, self.labels[idx]


class CosineScorer:
    """The peer's embedding scored without a trained head: cosine similarity to the mean of
    each class's (unit-length) exemplar embeddings. Same `embed` / `class_scores` interface as
    siamese.evaluate.Scorer, so the few-shot episodes are run by the same code as ours, and the
    same test-time augmentation (`flip`)."""

    def __init__(self, branch, batch_size=200, flip=False, shifts=False):
        self.branch, self.batch_size, self.flip, self.shifts = branch, batch_size, flip, shifts

    def embed(self, images):
        return evaluate.embed(self.branch, images, self.batch_size, self.flip, self.shifts)

    def class_scores(self, queries, exemplars, exemplar_labels, learned=None):
        # `learned` is never given: the peer's episodes are on new classes, its training classes
        # are scored by its classifier.
        classes, inverse = np.unique(exemplar_labels, return_inverse=True)
        means = np.stack([evaluate.unit(exemplars[inverse == k]).mean(0) for k in range(len(classes))])
        return classes, evaluate.unit(queries) @ evaluate.unit(means).T


def _batches(images, size):
    """uint8 images -> float32 batches, cast one batch at a time (a float copy of all of
    them would cost 4x their memory)."""
    return (tf.data.Dataset.from_tensor_slices(images).batch(size)
            .map(lambda x: tf.cast(x, tf.float32)).prefetch(2))


def predict_logits(classifier, images, flip=False, shifts=False):
    """Class logits averaged over the test-time views (evaluate.views, ours' test-time
    augmentation), weighted as ours weights their embeddings."""
    _, weights = evaluate.views(tf.zeros((1, 2, 2, 1)), flip, shifts)
    total = sum(w * classifier.predict(_batches(images, 200).map(lambda x, k=k: evaluate.views(x, flip, shifts)[0][k]),
                                       verbose=0) for k, w in enumerate(weights))
    return total / sum(weights)


def build_classifier(num_classes, width=model.WIDTH, images=None, plan=None, depth=model.DEPTH):
    """Image -> the shared-style branch -> class logits (softmax in the loss). With `images`,
    the branch's whitening conv is set from them, as training sets ours, and the input is their size."""
    size = data.IMAGE_SIZE if images is None else images.shape[1]
    image = keras.Input(data.image_shape(size), name="image")
    # The branch as a practitioner's classifier has it: no length normalization at its end (ours
    # puts its embeddings on a sphere for the pair head; a softmax on them would be a different
    # classifier). Its embedding is L2-normalized for the episodes anyway.
    branch = model.build_branch(width=width, normalize=False, size=size, depth=depth)
    if images is not None:
        model.whiten(branch, images)
    if plan is not None:
        plan.init_(branch)   # ours' initialisation (siamese.recipe)
    return keras.Model(image, layers.Dense(num_classes, name="softmax")(branch(image)), name="softmax_peer")


def run(ds, minutes, shots, holdout=None, epochs=None, batch_size=BATCH_SIZE, plan=None, seed=0, novel=None,
        width=model.WIDTH, flip=True, depth=model.DEPTH):
    """Train the peer for `minutes` (and at most `epochs`; EPOCHS without either) and evaluate it.

    shots: exemplars per class for embedding_top1 (None: all). holdout: a --holdout value
    ('fc100', N or None); the split is the one ours makes with the same seed, and the held-out
    classes are never trained on. novel: (x, y) of other classes for the same few-shot episodes.
    plan: ours' siamese.recipe.Recipe (optimizer, schedule, label smoothing, weight averaging,
    XLA); bench.py makes it from ours' flags. Default: Cifar-100.py's defaults."""
    plan = plan or recipe.Recipe(lr=LR)
    keras.utils.set_random_seed(seed)
    seen, unseen, _ = splits.holdout(ds, splits.parse(holdout), seed)
    keep, keep_test = np.isin(ds.y_train, seen), np.isin(ds.y_test, seen)
    x_train, y_train = ds.x_train[keep], ds.y_train[keep]
    x_test, y_test = ds.x_test[keep_test], ds.y_test[keep_test]

    sampler = ShuffledBatches(y_train, batch_size, seed)
    classifier = build_classifier(len(sampler.classes), width, x_train, plan, depth)
    plan.compile(classifier, loss=functools.partial(recipe.identity_loss, smoothing=plan.label_smoothing),
                 metrics=["accuracy"])
    clock = Clock(minutes * 60 if minutes else None)
    epochs = epochs or (None if minutes else EPOCHS)
    last_step = epochs and epochs * sampler.steps
    schedule = plan.schedule_(last_step, clock)
    small = plan.small_first_(schedule)   # ours' --progressive; None when off
    history = classifier.fit(pipeline(x_train, sampler, 0, seed, last_step, flip=flip, alternate=plan.alternate_flips,
                                      small=small),
                             epochs=epochs or train.UNCAPPED, steps_per_epoch=sampler.steps, shuffle=False, verbose=2,
                             callbacks=[clock, schedule, *([small] if small else [])])

    logits = predict_logits(classifier, x_test, flip, plan.test_shifts)
    ranked = evaluate.top_k(sampler.classes, logits, min(5, len(sampler.classes)))
    scorer = CosineScorer(classifier.get_layer("branch"), flip=flip, shifts=plan.test_shifts)
    ex_idx, ex_labels = pairs.exemplar_indices(y_train, shots)
    ids, scores = scorer.class_scores(scorer.embed(x_test), scorer.embed(x_train[ex_idx]), ex_labels)
    result = {
        "train_images_per_s": clock.steps * sampler.size / max(clock.seconds, 1e-9),
        "train_seconds": clock.seconds,
        "top1": float(np.mean(ranked[:, 0] == y_test)),
        "top5": float(np.mean((ranked == y_test[:, None]).any(1))),
        "embedding_top1": float(np.mean(ids[scores.argmax(1)] == y_test)),
        "epochs": len(history.history["loss"]),
        "train_steps": clock.steps,
        "classes": int(len(sampler.classes)),
        "test_images": int(len(y_test)),
    }
    if len(unseen):
        result.update(train.episodes(scorer, ds.x_test, ds.y_test, unseen))   # open set: max cosine as the score
    if novel is not None:
        result.update(novel_episodes(scorer, novel))
    return result
