"""The tf.data input pipeline: class-balanced index batches -> gathered, augmented float images."""
import numpy as np
import tensorflow as tf

from . import data

PAD = 2   # translations of up to 2 pixels (chosen side by side: docs/benchmarks.md, "Choosing the branch and its training settings")


def augment(images, seed):
    """Random horizontal flip + translation by up to PAD pixels (reflect-padded), uint8 in and
    out. Stateless random ops: the same seed (a pair of ints) gives the same batch."""
    n, seed = tf.shape(images)[0], tf.cast(seed, tf.int64)
    padded = tf.pad(images, [[0, 0], [PAD, PAD], [PAD, PAD], [0, 0]], mode="REFLECT")
    dy, dx = tf.unstack(tf.random.stateless_uniform([2, n, 1], seed, 0, 2 * PAD + 1, tf.int32))
    flip = tf.random.stateless_uniform([n, 1], seed + [0, 1]) < 0.5   # a second stream
    height, width = data.IMAGE_SHAPE[:2]
    rows = dy + tf.range(height)[None, :]
    cols = tf.range(width)[None, :]
    cols = tf.where(flip, dx + width - 1 - cols, dx + cols)
    return tf.gather(tf.gather(padded, rows, batch_dims=1), cols, axis=2, batch_dims=1)


def pipeline(x, sampler, first_step, seed, last_step=None):
    """tf.data over the class-balanced batches of global steps first_step..last_step-1 (no end
    when last_step is None: a time budget stops it).

    Each batch's indices are drawn as training goes, from (seed, epoch, step) alone, so any
    number of epochs costs no start-up time or memory and a resumed run sees the batches an
    uninterrupted one would. Images stay uint8 until a batch is gathered and augmented in
    parallel `map` calls; one dataset spans all epochs, so no per-epoch iterator is torn down."""
    def draw(step):   # in numpy: the sampler's stateless generator, seeded per batch
        return sampler.batch(*divmod(int(step), sampler.steps))[0].astype(np.int64)

    def gather(idx):   # in numpy: a tf.constant of x would copy it, and its graph again
        return tf.ensure_shape(tf.numpy_function(lambda i: x[i], [idx], tf.uint8, stateful=False),
                               (None, *x.shape[1:]))

    def make_batch(step):
        idx = tf.ensure_shape(tf.numpy_function(draw, [step], tf.int64, stateful=False), (None,))
        batch = augment(gather(idx), tf.stack([tf.constant(seed, tf.int64), step]))
        return tf.cast(batch, tf.float32), tf.gather(sampler.labels, idx)

    # Every worker of a multi-worker run builds this same dataset; DATA sharding gives each
    # its share of every global batch (as MirroredStrategy splits it between devices).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    steps = tf.data.Dataset.counter(first_step, dtype=tf.int64)
    if last_step is not None:
        steps = steps.take(last_step - first_step)
    return (steps.with_options(options)
            .map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))
