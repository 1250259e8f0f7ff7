import json

import keras
import numpy as np

from siamese import evaluate, model


def numpy_pair_loss(logits, labels):
    same = labels[:, None] == labels[None, :]
    upper = np.triu(np.ones_like(same), 1).astype(bool)
    p = 1 / (1 + np.exp(-logits))
    bce = -(same * np.log(p) + (~same) * np.log(1 - p))
    return 0.5 * (bce[same & upper].mean() + bce[~same & upper].mean())


def test_pair_loss_weights_same_and_different_equally():
    rng = np.random.default_rng(0)
    labels = np.array([1, 1, 1, 7, 7, 9])
    logits = rng.normal(size=(6, 6)).astype(np.float32)
    got = float(model.pair_loss(logits, labels))
    np.testing.assert_allclose(got, numpy_pair_loss(logits, labels), rtol=1e-5)
    # Perfect logits -> near zero loss and accuracy 1; inverted -> accuracy 0.
    same = labels[:, None] == labels[None, :]
    perfect = np.where(same, 20.0, -20.0).astype(np.float32)
    assert float(model.pair_loss(perfect, labels)) < 1e-6
    assert float(model.pair_accuracy(perfect, labels)) == 1.0
    assert float(model.pair_accuracy(-perfect, labels)) == 0.0


def test_pair_logits_match_the_siamese_model():
    siamese = model.build_siamese()
    branch, head = model.parts(siamese)
    x = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3)).astype(np.float32)
    logits = np.asarray(model.pair_logits(branch(x), head))
    i, j = np.triu_indices(5, 1)
    full = siamese.predict({"left": x[i], "right": x[j]}, verbose=0)[:, 0]
    np.testing.assert_allclose(1 / (1 + np.exp(-logits[i, j])), full, rtol=1e-4, atol=1e-5)


def test_json_uses_only_builtin_layers_and_no_lambda():
    text = model.build_siamese().to_json()
    assert "Lambda" not in text
    spec = json.loads(text)
    assert {k: v[0] for k, v in spec["config"]["input_layers"].items()} == {"left": "left", "right": "right"}
    keras.models.model_from_json(text)   # no custom objects needed


def test_chunked_scorer_agrees_with_full_model(monkeypatch):
    siamese = model.build_siamese()
    rng = np.random.default_rng(1)
    queries = rng.integers(0, 256, size=(7, 32, 32, 3), dtype=np.uint8)
    exemplars = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    ex_labels = np.array([40, 40, 3, 3, 3, 11])
    monkeypatch.setattr(evaluate, "CHUNK_FLOATS", 1000)     # force many small chunks
    scorer = evaluate.Scorer(siamese, batch_size=4)
    classes, scores = scorer.class_scores(scorer.embed(queries), scorer.embed(exemplars), ex_labels)
    qi, ei = np.meshgrid(np.arange(7), np.arange(6), indexing="ij")
    full = siamese.predict({"left": queries[qi.ravel()].astype(np.float32),
                            "right": exemplars[ei.ravel()].astype(np.float32)}, verbose=0).reshape(7, 6)
    np.testing.assert_array_equal(classes, [3, 11, 40])
    # A class of one exemplar is that exemplar: the full two-input model's own score.
    np.testing.assert_allclose(scores[:, 1], full[:, ex_labels == 11][:, 0], rtol=1e-4, atol=1e-5)
    # Others: the head on |query - prototype|, the prototype being the class's mean embedding.
    _, protos = evaluate.class_prototypes(scorer.embed(exemplars), ex_labels)
    head = siamese.get_layer("head")
    w, b = (np.asarray(v) for v in head.weights)
    q = scorer.embed(queries)
    expected = 1 / (1 + np.exp(-(np.abs(q[:, None] - protos[None]) @ w[:, 0] + b[0])))
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    pair = scorer.pair_scores(scorer.embed(queries[:6]), scorer.embed(exemplars))
    np.testing.assert_allclose(pair, np.diag(full[:6]), rtol=1e-4, atol=1e-5)


def test_prototypes_are_class_means_put_back_at_the_exemplars_length():
    rng = np.random.default_rng(2)
    e = rng.normal(size=(7, 16)).astype(np.float32)
    e *= np.sqrt(16) / np.linalg.norm(e, axis=1, keepdims=True)      # on the sphere, as the branch makes them
    labels = np.array([9, 2, 9, 9, 2, 5, 9])                          # unsorted, not contiguous
    classes, protos = evaluate.class_prototypes(e, labels)
    np.testing.assert_array_equal(classes, [2, 5, 9])
    np.testing.assert_allclose(protos[1], e[5], rtol=1e-6)           # one exemplar: itself
    for k, c in enumerate(classes):
        mean = e[labels == c].mean(0)
        np.testing.assert_allclose(protos[k] / np.linalg.norm(protos[k]), mean / np.linalg.norm(mean), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(protos, axis=1), 4.0, rtol=1e-5)
    unnormalized = e * np.arange(1, 8)[:, None]                       # lengths 4..28: the mean length is kept
    _, protos = evaluate.class_prototypes(unnormalized, labels)
    np.testing.assert_allclose(np.linalg.norm(protos[0]), 4 * (2 + 5) / 2, rtol=1e-5)


def test_branch_embeddings_lie_on_a_sphere_and_json_still_plain():
    branch = model.build_branch()
    x = np.random.default_rng(3).integers(0, 256, size=(5, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(branch(x).numpy(), axis=1), np.sqrt(model.EMBED_DIM), rtol=1e-5)
    assert np.linalg.norm(model.build_branch(normalize=False)(x).numpy(), axis=1).std() > 0


def test_roc_auc_matches_rank_statistic():
    rng = np.random.default_rng(0)
    same = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500) + 0.3 * same, 2)      # with ties
    pos, neg = scores[same == 1], scores[same == 0]
    expected = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    np.testing.assert_allclose(evaluate.roc_auc(same, scores), expected, rtol=1e-12)
    fpr, tpr = evaluate.roc_curve(same, scores)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1


def _fit_a_few_steps(head, id_weight):
    keras.utils.set_random_seed(0)
    siamese = model.build_siamese()
    trainer = model.PairTrainer(siamese, classes=4, id_weight=id_weight, head=head)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(16, 32, 32, 3)).astype(np.float32)
    y = np.repeat(np.arange(4), 4)
    trainer.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    return siamese, trainer


def test_tied_head_stays_a_distance_and_the_saved_model_stays_plain():
    """head='tied': after training, every weight of the head is the same number <= 0, so P(same)
    falls as the L1 distance grows; the constraint lives on the variable, so the JSON does not
    mention it and the identification layer is not part of the saved model."""
    siamese, trainer = _fit_a_few_steps("tied", 1.0)
    kernel = model.parts(siamese)[1].kernel.numpy()
    assert np.all(kernel == kernel[0]) and kernel[0, 0] <= 0
    text = siamese.to_json()
    head = next(l for l in json.loads(text)["config"]["layers"] if l["name"] == "head")
    assert head["config"]["kernel_constraint"] is None
    assert "identity" not in text and trainer.identity is not None
    keras.models.model_from_json(text)


def test_free_head_is_the_seed_behaviour():
    siamese, trainer = _fit_a_few_steps("free", 0.0)
    kernel = model.parts(siamese)[1].kernel.numpy()
    assert len(np.unique(kernel)) > 1 and trainer.identity is None


def test_width_scales_airbench_channels():
    assert model.widths(1) == (64, 256, 256)
    assert model.widths(0.5) == (32, 128, 128)
    assert model.widths(2) == (128, 512, 512)
    small, big = model.build_branch(width=0.25), model.build_branch(width=1)
    assert small.count_params() < big.count_params()


def test_depth_adds_convolutions_to_every_block_and_the_json_stays_plain():
    def convs(branch):
        return [l.kernel.shape[-1] for l in branch.layers if type(l).__name__ == "Conv2D" and l.trainable]
    assert convs(model.build_branch()) == [64, 64, 256, 256, 256, 256]   # airbench94's two a block, its widths
    deep = model.build_branch(depth=3)
    assert convs(deep) == [64] * 3 + [256] * 6
    text = model.build_siamese(deep).to_json()
    assert len(convs(keras.models.model_from_json(text).get_layer("branch"))) == 9


def test_whitening_decorrelates_the_patches_it_was_fit_on():
    """After `whiten`, the frozen first conv's first 12 channels (the eigenvectors; the other
    12 are their negatives) have zero mean and unit, uncorrelated variance on those images,
    whatever their colours; before, they do not. It is frozen, and the JSON says so."""
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, size=(300, 32, 32, 3))
    images = base + np.roll(base, 1, 1) + np.roll(base, 1, 2) + base.mean(-1, keepdims=True)   # correlated
    images = np.clip(images * [30, 15, 6] + 120, 0, 255).astype(np.uint8)                      # unequal channels
    branch = model.build_branch(width=0.125)
    whiten = branch.get_layer("whiten")
    first = keras.Model(branch.input, whiten.output)

    def covariance():
        out = first(images.astype(np.float32)).numpy().reshape(-1, 2 * model.WHITEN)
        return out.mean(0)[:model.WHITEN], np.cov(out[:, :model.WHITEN], rowvar=False)

    assert not np.allclose(covariance()[1], np.eye(model.WHITEN), atol=0.1)
    model.whiten(branch, images, eps=1e-6)
    mean, cov = covariance()
    np.testing.assert_allclose(mean, 0, atol=2e-2)
    np.testing.assert_allclose(cov, np.eye(model.WHITEN), atol=2e-2)
    np.testing.assert_allclose(whiten.kernel.numpy()[..., model.WHITEN:], -whiten.kernel.numpy()[..., :model.WHITEN])
    assert not whiten.trainable and all(w is not whiten.kernel for w in branch.trainable_weights)
    spec = next(l for l in json.loads(branch.to_json())["config"]["layers"] if l["name"] == "whiten")
    assert spec["config"]["trainable"] is False


def test_flip_scoring_sees_an_image_and_its_mirror_alike():
    """Test-time augmentation: with flip, an image and its mirror image get one embedding (on the
    sphere, like every other); without, they differ."""
    siamese = model.build_siamese(model.build_branch(width=0.25))
    x = np.random.default_rng(4).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    mirrored = x[:, :, ::-1]
    flip, plain = evaluate.Scorer(siamese, flip=True), evaluate.Scorer(siamese)
    np.testing.assert_allclose(flip.embed(x), flip.embed(mirrored), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(flip.embed(x), axis=1), np.sqrt(model.EMBED_DIM), rtol=1e-4)
    assert not np.allclose(plain.embed(x), plain.embed(mirrored), atol=1e-3)


def test_learned_directions_are_the_prototypes_of_their_classes():
    """A class with a learned direction is scored through it, put at its exemplars' mean length,
    by the head as exemplar prototypes are; directions along the prototypes change nothing, and
    classes without one keep their exemplars."""
    siamese = model.build_siamese(model.build_branch(width=0.25))
    head = siamese.get_layer("head")
    head.kernel.assign(np.full(head.kernel.shape, -0.1, np.float32))   # tied, as training keeps it: a distance
    scorer = evaluate.Scorer(siamese)
    rng = np.random.default_rng(4)
    train_x = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    train_y = np.repeat([7, 3, 9, 5], 3)
    four = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    test_x, test_y = np.r_[four, four], np.array([9, 5, 7, 3] * 2)   # two of each: verification pairs
    test_emb = scorer.embed(test_x)
    plain, _, _ = evaluate.test_metrics(scorer, train_x, train_y, test_emb, test_y, None)
    assert "top1_exemplars" not in plain and plain["learned_classes"] == 0
    ids, protos = evaluate.class_prototypes(scorer.embed(train_x), train_y)
    along = {int(c): 3 * p for c, p in zip(ids, protos)}
    same, _, _ = evaluate.test_metrics(scorer, train_x, train_y, test_emb, test_y, None, learned=along)
    assert same["top1"] == same["top1_exemplars"] == plain["top1"] and same["learned_classes"] == 4
    # Each class's direction at its own test image, and a class with no exemplars (ignored).
    own = {**{int(c): e for c, e in zip(test_y[:4], test_emb[:4])}, 42: test_emb[0]}
    m, _, (classes, _) = evaluate.test_metrics(scorer, train_x, train_y, test_emb, test_y, None, learned=own)
    assert m["top1"] == 1.0 and m["top1_exemplars"] == plain["top1"] and 42 not in classes
    # Learned for two classes only: the other two keep their exemplar prototypes, at their length.
    two = {7: test_emb[2], 3: test_emb[3]}
    got_ids, got = evaluate.class_prototypes(scorer.embed(train_x), train_y, two)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_allclose(got[[1, 3]], protos[[1, 3]])   # ids 3, 5, 7, 9: 5 and 9 by exemplars
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(protos, axis=1), rtol=1e-5)
    np.testing.assert_allclose(evaluate.unit(got[[2, 0]]), evaluate.unit(np.stack([two[7], two[3]])), atol=1e-6)
