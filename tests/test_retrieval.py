"""Retrieval: the nearest references by P(same), Recall@K and MAP@R (Musgrave et al. 2020),
checked against a hand-worked example through the real scorer."""
import keras
import numpy as np
import pytest

from siamese import evaluate, model

D = model.EMBED_DIM


@pytest.fixture(scope="module")
def scorer():
    """The real scorer on a head with one weight for every |a_i - b_i| (the tied head): P(same)
    falls with the L1 distance, so rankings can be worked out by hand."""
    siamese = model.build_siamese()
    head = siamese.get_layer("head")
    head.kernel.assign(np.full((D, 1), -1.0 / D, np.float32))
    head.bias.assign(np.zeros(1, np.float32))
    return evaluate.Scorer(siamese)


def on_a_line(positions):
    """Embeddings whose L1 distances are those of the given points on a line."""
    e = np.zeros((len(positions), D), np.float32)
    e[:, 0] = positions
    return e


# Class a at 0, 1, 6.5; b at 4, 5; c alone at 20 (nothing to find, left out); d at 100, 101,
# 102.5, 110 with e alone at 101.7 between them (left out as a query, but in the way).
POINTS = [(0, "a"), (1, "a"), (6.5, "a"), (4, "b"), (5, "b"), (20, "c"),
          (100, "d"), (101, "d"), (102.5, "d"), (110, "d"), (101.7, "e")]


def test_recall_and_map_at_r_by_hand(scorer):
    positions, labels = zip(*POINTS)
    r = evaluate.retrieval(scorer, on_a_line(positions), np.array(labels))
    # Each query's others, nearest first; R = the others of its class; AP = mean over the first R
    # ranks of precision-at-rank where the class matches:
    #   a@0:   a1, b4, b5, a6.5 (R=2)  hits 1 0      AP (1 + 0) / 2       = 1/2
    #   a@1:   a0, b4, b5, a6.5 (R=2)  hits 1 0      AP 1/2
    #   a@6.5: b5, b4, a1, a0   (R=2)  hits 0 0      AP 0   (Recall@1 0, but an a within 5)
    #   b@4:   b5, a6.5, ...    (R=1)  hits 1        AP 1
    #   b@5:   b4, ...          (R=1)  hits 1        AP 1
    #   d@100:   d101, e, d102.5  (R=3) hits 1 0 1   AP (1 + 0 + 2/3) / 3 = 5/9
    #   d@101:   e, d100, d102.5  (R=3) hits 0 1 1   AP (0 + 1/2 + 2/3) / 3 = 7/18
    #   d@102.5: e, d101, d100    (R=3) hits 0 1 1   AP 7/18
    #   d@110:   d102.5, e, d101  (R=3) hits 1 0 1   AP 5/9
    ap = [1 / 2, 1 / 2, 0, 1, 1, 5 / 9, 7 / 18, 7 / 18, 5 / 9]
    assert r["queries"] == 9
    assert r["recall@1"] == pytest.approx(6 / 9)
    assert r["recall@5"] == pytest.approx(1.0)
    assert r["map@r"] == pytest.approx(np.mean(ap))


def test_ranking_metrics_from_labels():
    found = np.array([["x", "y", "x"], ["y", "y", "x"], ["z", "z", "z"]])
    m = evaluate.ranking_metrics(found, np.array(["x", "x", "q"]), np.array([2, 3, 0]))
    # x: hits 1 0 (R=2) -> 1/2; x: hits 0 0 1 (R=3) -> (1/3) / 3; q: nothing to find, left out
    assert m["queries"] == 2 and m["recall@1"] == 0.5 and m["recall@5"] == 1.0
    assert m["map@r"] == pytest.approx((1 / 2 + 1 / 9) / 2)


@pytest.mark.parametrize("leave_one_out", [False, True])
def test_nearest_is_the_head_on_every_pair_in_small_chunks(monkeypatch, leave_one_out):
    siamese = model.build_siamese()
    scorer = evaluate.Scorer(siamese)
    rng = np.random.default_rng(3)
    queries = rng.normal(size=(9, D)).astype(np.float32)
    references = queries if leave_one_out else rng.normal(size=(14, D)).astype(np.float32)
    monkeypatch.setattr(evaluate, "CHUNK_FLOATS", 3 * D * len(references))   # 3 queries a chunk
    found, scores = scorer.nearest(queries, references, 4, leave_one_out=leave_one_out)
    head = siamese.get_layer("head")
    full = np.asarray(keras.ops.convert_to_numpy(head(np.abs(queries[:, None] - references[None]))))[..., 0]
    if leave_one_out:
        np.fill_diagonal(full, -1)
    expected = np.argsort(-full, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, 1), atol=1e-6)
    assert not leave_one_out or not (found == np.arange(9)[:, None]).any()


def test_training_reports_retrieval(trained):
    import pickle
    out, stdout = trained
    with open(out / "metrics.pkl", "rb") as f:
        r = pickle.load(f)["retrieval"]
    assert set(r) == {"recall@1", "recall@5", "map@r", "queries"} and r["queries"] == 100
    assert 0 < r["map@r"] <= 1 and 0.3 < r["recall@1"] <= r["recall@5"] <= 1   # chance 0.1
    assert (f"Recall@1 {r['recall@1']:.3f}, Recall@5 {r['recall@5']:.3f}, MAP@R {r['map@r']:.3f} (100 images)"
            in stdout)
