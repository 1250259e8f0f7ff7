"""The one-shot protocol on novel classes, shared by both systems of the benchmark: ours
(bench.py's child) and the softmax peer (softmax_peer.py) score the same episodes through this
one function. Its own module so that neither of the two imports the other."""


def novel_episodes(scorer, novel):
    """train.episodes on the novel classes, and the same without test-time augmentation (what it
    adds, for either system)."""
    from siamese import train
    r = train.episodes(scorer, *novel)
    result = {"novel": r["few_shot"], "novel_open_set": r["open_set"]}
    # The same episodes under the other test-time views: none, and the flip with or without shifts.
    flip, shifts = scorer.flip, scorer.shifts
    others = {"novel_no_tta": (False, False)}
    if flip:
        others["novel_shifts" if not shifts else "novel_flip_only"] = (True, not shifts)
    for key, (scorer.flip, scorer.shifts) in others.items():
        result[key] = {k: v["mean"] for k, v in train.episodes(scorer, *novel)["few_shot"].items()}
    scorer.flip, scorer.shifts = flip, shifts
    return result
