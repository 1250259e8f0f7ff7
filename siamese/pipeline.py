"""The tf.data input pipeline: class-balanced index batches -> gathered, augmented float images."""
import numpy as np
import tensorflow as tf

from . import data

PAD = 2   # translations of up to 2 pixels at 32x32 (chosen side by side: docs/benchmarks.md, "Choosing the branch and its training settings")


def pad(size):
    """The translation for images `size` pixels a side: PAD in proportion (4 at 64x64)."""
    return max(1, round(PAD * size / data.IMAGE_SIZE))


def small_side(size):
    """--progressive: the side of the images its first share of the run trains on (24 at 32)."""
    return max(8, round(size * 3 / 4))


def augment(images, seed, flip=True, mirror=None):
    """Random horizontal flip (unless flip=False; `mirror`, (N,) bools, says which when given)
    + translation by up to `pad(size)` pixels (reflect-padded), uint8 in and out, any static
    size. Stateless random ops: the same seed (a pair of ints) gives the same batch."""
    n, seed = tf.shape(images)[0], tf.cast(seed, tf.int64)
    height, width = images.shape[1:3]
    p = pad(height)
    padded = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]], mode="REFLECT")
    dy, dx = tf.unstack(tf.random.stateless_uniform([2, n, 1], seed, 0, 2 * p + 1, tf.int32))
    if mirror is None:
        mirror = tf.random.stateless_uniform([n, 1], seed + [0, 1]) < (0.5 if flip else 0.0)   # a second stream
    else:
        mirror = tf.reshape(mirror, [n, 1])
    rows = dy + tf.range(height)[None, :]
    cols = tf.range(width)[None, :]
    cols = tf.where(mirror, dx + width - 1 - cols, dx + cols)
    return tf.gather(tf.gather(padded, rows, batch_dims=1), cols, axis=2, batch_dims=1)


def distort(images, seed, strength):
    """Random affine distortion, uint8 in and out: rotation up to 15 degrees, scaling and
    shear up to 15%, each times `strength` (Koch et al. 2015 distorted their characters so).
    Stateless: the same seed gives the same batch."""
    n = tf.shape(images)[0]
    r = tf.random.stateless_uniform([4, n], tf.cast(seed, tf.int64) + [0, 2], -strength, strength)
    angle, scale, shear_x, shear_y = r[0] * 0.2618, 1 + 0.15 * r[1], 0.15 * r[2], 0.15 * r[3]
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # Output pixel -> input pixel, about the image centre: rotation / scale, then shear.
    a0, a1 = cos + shear_x * sin, -sin + shear_x * cos
    b0, b1 = sin + shear_y * cos, cos - shear_y * sin
    height, width = images.shape[1:3]
    cy, cx = (height - 1) / 2, (width - 1) / 2
    zero = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, cx - a0 * cx - a1 * cy, b0, b1, cy - b0 * cx - b1 * cy, zero, zero], 1)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32), transforms=transforms, output_shape=[height, width],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)


def pipeline(x, sampler, first_step, seed, last_step=None, flip=True, distortion=0.0, alternate=False, small=None):
    """tf.data over the class-balanced batches of global steps first_step..last_step-1 (no end
    when last_step is None: a time budget stops it).

    Each batch's indices are drawn as training goes, from (seed, epoch, step) alone, so any
    number of epochs costs no start-up time or memory and a resumed run sees the batches an
    uninterrupted one would. Images stay uint8 until a batch is gathered and augmented in
    parallel `map` calls; one dataset spans all epochs, so no per-epoch iterator is torn down.

    `alternate` (with `flip`): airbench's alternating flip, each image mirrored on every other
    epoch from a seeded start of its own, rather than at random each time it is drawn.

    `small` (schedule.SmallFirst, --progressive): the batches of the steps it calls small are
    area-averaged to `small_side` after augmentation; the model takes either size (its
    convolutions and global pooling do not depend on it)."""
    # Labels as positions 0..C-1 in the sorted training classes: the pair loss only compares
    # them, and an identification softmax needs them contiguous.
    positions = np.searchsorted(sampler.classes, sampler.labels)

    first_flip = np.random.default_rng([seed, 2]).integers(0, 2, len(x), dtype=np.uint8)

    def draw(step):   # in numpy: the sampler's stateless generator, seeded per batch
        return sampler.batch(*divmod(int(step), sampler.steps))[0].astype(np.int64)

    def gather(idx):   # in numpy: a tf.constant of x would copy it, and its graph again
        return tf.ensure_shape(tf.numpy_function(lambda i: x[i], [idx], tf.uint8, stateful=False),
                               (None, *x.shape[1:]))

    def make_batch(step):
        idx = tf.ensure_shape(tf.numpy_function(draw, [step], tf.int64, stateful=False), (None,))
        batch_seed = tf.stack([tf.constant(seed, tf.int64), step])
        batch = gather(idx)
        if distortion:
            batch = distort(batch, batch_seed, distortion)
        mirror = None
        if flip and alternate:
            mirror = tf.not_equal(tf.gather(first_flip, idx), tf.cast(step // sampler.steps % 2, tf.uint8))
        batch = tf.cast(augment(batch, batch_seed, flip, mirror), tf.float32)
        if small is not None:
            side = small_side(x.shape[1])
            is_small = tf.numpy_function(lambda s: np.bool_(small.small(int(s))), [step], tf.bool)
            is_small = tf.ensure_shape(is_small, ())
            batch = tf.cond(is_small, lambda: tf.image.resize(batch, [side, side], method="area"), lambda: batch)
        return batch, tf.gather(positions, idx)

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
