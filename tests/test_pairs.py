import numpy as np

from siamese import pairs
from siamese.pipeline import PAD, augment, distort, pipeline


def labels_with_gaps():
    return np.repeat([5, 17, 42, 43, 90, 91], [30, 3, 25, 25, 40, 12])


def test_balanced_batches_have_p_classes_of_m_each():
    y = labels_with_gaps()
    s = pairs.BalancedBatches(y, batch_size=16, images_per_class=4, seed=0)
    assert (s.P, s.M) == (4, 4)
    idx, labels = s.batch(epoch=0, step=0)
    np.testing.assert_array_equal(labels, y[idx])
    classes, counts = np.unique(labels, return_counts=True)
    assert len(classes) == 4 and (counts == 4).all()
    assert len(set(idx[labels == 42])) == 4          # without replacement when the class is big


def test_small_class_is_sampled_with_replacement_and_few_classes_get_more_images():
    y = labels_with_gaps()
    s = pairs.BalancedBatches(y, batch_size=64, images_per_class=4, seed=0)
    assert (s.P, s.M) == (6, 10)                     # 6 classes only: 10 images each
    idx, labels = s.batch(0, 0)
    assert (labels == 17).sum() == 10                # class 17 has 3 images: repeats allowed


def test_batches_depend_only_on_seed_epoch_step():
    y = labels_with_gaps()
    a = pairs.BalancedBatches(y, 16, 4, seed=3)
    b = pairs.BalancedBatches(y, 16, 4, seed=3)
    np.testing.assert_array_equal(a.batch(2, 5)[0], b.batch(2, 5)[0])
    assert not np.array_equal(a.batch(2, 5)[0], a.batch(3, 5)[0])
    assert not np.array_equal(a.batch(2, 5)[0], pairs.BalancedBatches(y, 16, 4, seed=4).batch(2, 5)[0])


def test_hard_negatives_draw_classes_in_superclass_pairs():
    y = np.repeat(np.arange(20), 10)
    coarse = {c: c // 4 for c in range(20)}           # 5 superclasses of 4
    s = pairs.BalancedBatches(y, 32, 4, seed=0, coarse=coarse, hard_fraction=1.0)
    for step in range(20):
        _, labels = s.batch(0, step)
        classes = np.unique(labels)
        supers = np.array([coarse[c] for c in classes])
        assert len(classes) == 8
        assert (np.bincount(supers) >= 2).sum() >= 4   # 4 superclasses contribute 2 classes each


def test_verification_pairs_are_balanced_fixed_and_correct():
    y = labels_with_gaps()
    left, right, same = pairs.verification_pairs(y, 400, seed=0)
    assert same.sum() == 200 and len(same) == 400
    np.testing.assert_array_equal(y[left] == y[right], same.astype(bool))
    assert (left != right).all()
    np.testing.assert_array_equal(left, pairs.verification_pairs(y, 400, seed=0)[0])


def test_exemplars_are_first_in_file_order():
    y = np.array([9, 4, 9, 4, 4, 9, 1])
    idx, labels = pairs.exemplar_indices(y, 2)
    assert sorted(zip(labels.tolist(), idx.tolist())) == [(1, 6), (4, 1), (4, 3), (9, 0), (9, 2)]


def test_augment_flips_and_shifts_only():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    out = np.asarray(augment(x, [1, 2]))
    assert out.shape == x.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, augment(x, [1, 2]))          # seeded: same batch again
    assert not np.array_equal(out, augment(x, [1, 3]))
    # The centre of each output (all but PAD pixels at each edge) is a window of the input
    # shifted by at most PAD pixels, mirrored or not; both occur.
    size, mirrored = 32 - 2 * PAD, []
    for a, b in zip(x, out):
        windows = [a[dy:dy + size, dx:dx + size] for dy in range(2 * PAD + 1) for dx in range(2 * PAD + 1)]
        centre = b[PAD:PAD + size, PAD:PAD + size]
        plain = any(np.array_equal(centre, w) for w in windows)
        flip = any(np.array_equal(centre[:, ::-1], w) for w in windows)
        assert plain or flip
        mirrored.append(flip)
    assert 10 < sum(mirrored) < 54


def test_pipeline_draws_batches_as_it_goes_and_resumes_on_the_same_ones():
    """Batches are drawn per step from (seed, epoch, step): a pipeline started at step k gives
    the batches an uninterrupted one gives from step k, and an uncapped one starts at once."""
    y = labels_with_gaps()
    x = np.random.default_rng(0).integers(0, 256, size=(len(y), 32, 32, 3), dtype=np.uint8)
    s = pairs.BalancedBatches(y, 12, 3, seed=5)
    straight = [(a.numpy(), b.numpy()) for a, b in pipeline(x, s, 0, seed=5, last_step=2 * s.steps + 3)]
    assert len(straight) == 2 * s.steps + 3
    resumed = list(pipeline(x, s, s.steps + 1, seed=5).take(s.steps + 2))   # no end: --max-minutes alone
    for (a, b), (c, d) in zip(straight[s.steps + 1:], resumed):
        np.testing.assert_array_equal(a, c.numpy())
        np.testing.assert_array_equal(b, d.numpy())
    epoch, step = divmod(s.steps + 1, s.steps)
    np.testing.assert_array_equal(straight[s.steps + 1][1], np.searchsorted(s.classes, s.batch(epoch, step)[1]))


def test_no_flip_never_mirrors_and_distort_is_seeded():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    out = np.asarray(augment(x, [1, 2], flip=False))
    size = 32 - 2 * PAD
    for a, b in zip(x, out):   # every centre is an unmirrored window of its input
        centre = b[PAD:PAD + size, PAD:PAD + size]
        assert any(np.array_equal(centre, a[dy:dy + size, dx:dx + size])
                   for dy in range(2 * PAD + 1) for dx in range(2 * PAD + 1))
    d = np.asarray(distort(x, [3, 4], 1.0))
    assert d.shape == x.shape and d.dtype == np.uint8
    np.testing.assert_array_equal(d, distort(x, [3, 4], 1.0))
    assert not np.array_equal(d, distort(x, [3, 5], 1.0))
    np.testing.assert_array_equal(distort(x, [3, 4], 0.0), x)   # strength 0: the identity


def test_rotated_classes_are_new_classes_of_turned_images():
    from siamese.train import rotated_classes
    x = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    y = np.array([7, 3, 7, 90, 3])
    xr, yr = rotated_classes(x, y)
    assert len(xr) == 20 and len(np.unique(yr)) == 12 and set(yr[:5]) == {3, 7, 90}
    np.testing.assert_array_equal(xr[5 + 1], np.rot90(x[1]))          # 90 degrees, class 3 + 91
    assert yr[5 + 1] == 3 + 91 and yr[15 + 1] == 3 + 3 * 91
    np.testing.assert_array_equal(xr[10:15], x[:, ::-1, ::-1])         # 180 degrees


def test_progressive_batches_are_the_same_batches_area_averaged_until_the_switch():
    """--progressive: the steps before SmallFirst's switch give the batch an unswitched pipeline
    gives, area-averaged to 3/4 the side; the steps after it are unchanged. With a step budget
    the switch is known from the start (a resumed run switches where the straight one did); with
    a time budget it is the first step whose progress reaches the share."""
    import math
    from types import SimpleNamespace

    import tensorflow as tf

    from siamese.pipeline import small_side
    from siamese.schedule import Clock, RateSchedule, SmallFirst

    y = labels_with_gaps()
    x = np.random.default_rng(0).integers(0, 256, size=(len(y), 32, 32, 3), dtype=np.uint8)
    s = pairs.BalancedBatches(y, 12, 3, seed=5)
    total = 2 * s.steps
    small = SmallFirst(RateSchedule(1e-3, total, Clock(None)), 0.3)
    assert small.until == math.ceil(0.3 * total) and small_side(32) == 24 and small_side(64) == 48
    plain = [a.numpy() for a, _ in pipeline(x, s, 0, seed=5, last_step=total)]
    progressive = [a.numpy() for a, _ in pipeline(x, s, 0, seed=5, last_step=total, small=small)]
    for step, (a, b) in enumerate(zip(plain, progressive)):
        if step < small.until:
            assert b.shape[1:] == (24, 24, 3)
            np.testing.assert_allclose(b, tf.image.resize(a, [24, 24], method="area").numpy(), atol=1e-4)
        else:
            np.testing.assert_array_equal(a, b)
    assert SmallFirst(RateSchedule(1e-3, total, Clock(None)), 0.3, start_step=total - 1).until == small.until

    clock = Clock(100.0)   # a time budget: the switch waits for the progress
    timed = SmallFirst(RateSchedule(1e-3, None, clock), 0.25)
    timed.set_model(SimpleNamespace(optimizer=SimpleNamespace(iterations=tf.Variable(7))))
    clock.seconds = 20.0
    timed.on_train_batch_begin(0)
    assert timed.until == math.inf and timed.small(7)
    clock.seconds = 25.0
    timed.on_train_batch_begin(0)
    assert timed.until == 7 and not timed.small(7) and timed.small(6)
    assert SmallFirst(RateSchedule(1e-3, None, Clock(100.0, spent=30.0)), 0.25, start_step=40).until == 40
