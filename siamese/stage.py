"""The metric stage (issue 33): Meta-Baseline's episodes, scored by the Siamese head itself.

A default batch is 64 classes x 2 images, i.e. a 64-way 1-shot episode. In the stage, each class's
first half of images (at least one) is its support, their mean its prototype, the rest are
queries; a query's logits over the batch's classes are the head's logit of P(same) of
|query - prototype|. So the score users get (P(same) to class exemplars) is trained on the very
task it is used for. Meta-Baseline (NOTES-frontier.md) runs such episodes after a classifier
stage; here the last `fraction` of the run's progress is the stage.
"""
import keras
import tensorflow as tf
from keras import ops


# The episodes' temperature (Meta-Baseline learns one, starting at 10 on cosines). The tied head's
# logits span about one unit over a query's 64 prototypes (its weight calibrates P(same), not a
# 64-way softmax): unscaled (and with the softmax dropped), the episodes' loss sat at log 64, its
# gradient mostly grew the head's weight and the run lost 3 points at 5-shot on held-out classes;
# times 16 (softmax kept) it tied the stage-free run (docs/benchmarks.md, "Metric stage"). A
# constant: the head's own ranking is what trains, and no weight is added to checkpoints.
SCALE = 16.0
# --stage-score cosine: Meta-Baseline's own scoring, the cosine of query and prototype times its
# temperature (it learns one from 10; a constant here, as SCALE is). The head then trains only
# through the pair loss, which keeps P(same) calibrated.
COSINE_SCALE = 10.0


def episodic_loss(embeddings, labels, head, score="head"):
    """Cross-entropy of each query over the batch's class prototypes, logits from `head` (the
    Dense(1) on |a - b|), or with score="cosine" the scaled cosine of query and prototype.
    Order-free: support and query come from each image's rank within its class in the batch, so
    any batch of classes with >= 2 images each works (a class with one image is a support only: a
    distractor prototype)."""
    labels = ops.reshape(labels, (-1,))
    n = ops.shape(labels)[0]
    same = ops.cast(ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0)), "float32")
    earlier = ops.cast(ops.tril(ops.ones((n, n)), k=-1), "float32")        # j < i
    rank = ops.sum(same * earlier, axis=1)                                  # same-class images before i
    count = ops.sum(same, axis=1)
    support = ops.cast(rank < ops.maximum(1.0, ops.floor(count / 2)), "float32")
    # Row i: the prototype of i's class (mean of its supports). Only one row per class is a
    # column of the episode (rank 0), so each class is one candidate.
    weights = same * ops.expand_dims(support, 0)
    prototypes = ops.matmul(weights / ops.sum(weights, axis=1, keepdims=True), embeddings)
    if score == "cosine":
        logits = COSINE_SCALE * ops.matmul(ops.normalize(embeddings, axis=1),
                                           ops.transpose(ops.normalize(prototypes, axis=1)))
    else:
        l1 = ops.abs(ops.expand_dims(embeddings, 1) - ops.expand_dims(prototypes, 0))   # (query, class)
        logits = SCALE * (ops.squeeze(ops.matmul(l1, head.kernel), -1) + head.bias)
    column = ops.cast(ops.equal(rank, 0.0), "float32")
    logits = ops.where(ops.expand_dims(column, 0) > 0, logits, -1e9)
    target = same * ops.expand_dims(column, 0)                              # the query's own class
    query = 1.0 - support
    ce = ops.categorical_crossentropy(target, logits, from_logits=True)
    return ops.sum(ce * query) / ops.maximum(ops.sum(query), 1.0)


def in_stage(progress, fraction):
    """The stage is the last `fraction` of the run's progress (0: never)."""
    return fraction > 0 and progress >= 1 - fraction


class MetricStage(keras.callbacks.Callback):
    """Sets the trainer's stage switch before every step from the run's progress, the rate
    schedule's own (max of steps and seconds of the budget), and in the stage scales that step's
    rate by `lr_scale`. Put it after the RateSchedule, which sets the rate first. Both inputs
    of the progress (optimizer.iterations, the clock's seconds) are restored by --resume, so a
    resumed run lands in the stage an uninterrupted one would be in; the switch itself is not
    saved."""

    def __init__(self, schedule, fraction, lr_scale=1.0):
        super().__init__()
        self.schedule, self.fraction, self.lr_scale = schedule, fraction, lr_scale

    def progress(self, step):
        return self.schedule.progress(step, self.schedule.clock.seconds)

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        on = in_stage(self.progress(step), self.fraction)
        self.model.stage.assign(1.0 if on else 0.0)
        if on and self.lr_scale != 1.0:
            lr = self.model.optimizer.learning_rate
            lr.assign(lr * self.lr_scale)


def switch():
    """The trainer's stage switch: a plain tf.Variable, so Keras saves it in no weights file
    (checkpoints and the artifact keep their layout) while the compiled step reads it."""
    return tf.Variable(0.0, trainable=False, name="metric_stage")
