"""Held-out classes: which classes training may see, and which stay unseen for few-shot tests."""
import numpy as np

from .errors import UserError

# FC100 (Oreshkin et al., 2018, "TADAM: Task dependent adaptive metric for improved few-shot
# learning", NeurIPS; split as published in github.com/ElementAI/TADAM): CIFAR-100 divided by
# superclass, so unseen classes share no superclass with the training classes.
FC100 = {
    "train": ["fish", "flowers", "food_containers", "fruit_and_vegetables",
              "household_electrical_devices", "household_furniture",
              "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "reptiles",
              "trees", "vehicles_1", "vehicles_2"],
    "val": ["large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates",
            "small_mammals"],
    "test": ["aquatic_mammals", "insects", "medium_mammals", "people"],
}


def parse(spec):
    """--holdout value: None, 'fc100' or a positive int."""
    if spec is None or spec == "fc100":
        return spec
    try:
        n = int(spec)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"--holdout must be 'fc100' or a positive number of unseen classes, got {spec!r}")
    return n


def holdout(ds, spec, seed):
    """Split the dataset's classes into (seen, unseen, record).

    seen: class ids training may use; unseen: ids kept for few-shot evaluation (never trained
    on, not even as negatives); record: names of each group, stored in metrics['config']."""
    classes = ds.classes
    if spec is None:
        return classes, np.array([], dtype=np.int64), None
    val = np.array([], dtype=np.int64)
    if spec == "fc100":
        if ds.coarse_train is None:
            raise UserError("--holdout fc100 needs CIFAR-100 superclass (coarse) labels, which this "
                            "data has not; use --holdout N for a random split")
        coarse_of = {int(c): ds.coarse_names[int(ds.coarse_train[ds.y_train == c][0])] for c in classes}
        group = {name: part for part, names in FC100.items() for name in names}
        unknown = sorted({n for n in coarse_of.values() if n not in group})
        if unknown:
            raise UserError(f"--holdout fc100: superclasses {unknown} are not CIFAR-100's; "
                            "use --holdout N for this data")
        pick = lambda part: np.array([c for c in classes if group[coarse_of[c]] == part], dtype=np.int64)
        seen, val, unseen = pick("train"), pick("val"), pick("test")
    else:
        if spec >= len(classes) - 1:
            raise UserError(f"--holdout {spec} leaves fewer than 2 of the {len(classes)} classes "
                            "for training; hold out fewer")
        rng = np.random.default_rng(seed)
        unseen = np.sort(rng.choice(classes, size=spec, replace=False))
        seen = np.setdiff1d(classes, unseen)
    if len(unseen) < 2 or len(seen) < 2:
        raise UserError(f"--holdout {spec} gives {len(seen)} seen and {len(unseen)} unseen classes "
                        "on this data; both need at least 2")
    names = lambda ids: [ds.class_names[int(c)] for c in ids]
    return seen, unseen, {"holdout": spec, "seen": names(seen), "val": names(val), "unseen": names(unseen)}
