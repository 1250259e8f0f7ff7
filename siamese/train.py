"""Training, as a recipe: load -> split -> sample -> build -> fit -> evaluate -> save.

Run through `python Cifar-100.py`; `main(args)` takes the parsed flags. The pieces live in
modules named for them: data (loading), splits (held-out classes), pairs (batch sampling),
model (network + pair loss), pipeline (tf.data), schedule (time budget + learning rate),
distribute (tf.distribute), evaluate (the scorer), artifacts (saving), checkpoint (the state
--resume continues from), lock (one run per --out).
"""
import dataclasses
import math
import signal
import sys
import time
from argparse import Namespace
from pathlib import Path

import keras
import numpy as np

from . import artifacts, checkpoint, data, distribute, evaluate, pairs, recipe, splits
from .errors import UserError
from .lock import RunLock
from .logs import TensorBoard
from .model import CosineClassifier, PairTrainer, build_branch, build_siamese, whiten
from .pairs import BalancedBatches
from .pipeline import pipeline
from .schedule import Clock, EpochLine
from .stage import MetricStage

CHECKPOINT = "checkpoint"   # sub-folder of --out holding an unfinished run's state
# The cap when neither --epochs nor --max-minutes is given, by --recipe: photos train width 1
# (model.WIDTH), whose 10 epochs took about 10 minutes on a 2-core CPU with evaluation, about the
# time 20 of width 0.5 did (docs/benchmarks.md, "Width 1 by default"); characters keep 0.5 and 20.
EPOCHS = {"photos": 10, "characters": 20}
UNCAPPED = 10**6            # fit needs an epoch count: with --max-minutes alone the clock stops first
FEW_SHOT = [(5, 1), (5, 5), (20, 1)]   # (ways, shots) episodes on held-out classes
OPEN_SET = [(5, 1), (5, 5)]            # the same, open-set: as many unknown classes again
EPISODES = 600


def main(args):
    """One run per --out: its lock is held from before --out's state is read to the last file."""
    with RunLock(artifacts.check_writable(args.out), distribute.worker_suffix(args.strategy)):
        return _train(args)


def _train(args):
    args, run = _start(args)
    keras.utils.set_random_seed(args.seed)

    ds = data.load(args.data_dir, args.test_fraction, args.seed, size=args.image_size)
    seen, unseen, split = splits.holdout(ds, splits.parse(args.holdout), args.seed)
    x_train, y_train = _only(seen, ds.x_train, ds.y_train)
    x_test, y_test = _only(seen, ds.x_test, ds.y_test)
    x_fit, y_fit = rotated_classes(x_train, y_train) if args.rotate_classes else (x_train, y_train)
    sampler = _sampler(args, ds, y_fit, seen)
    _describe(ds, y_train, seen, unseen, sampler)

    strategy = distribute.make_strategy(args.strategy, args.devices)
    with strategy.scope():
        sphere = args.embedding == "sphere"
        branch = build_branch(width=args.width, normalize=sphere, size=args.image_size, depth=args.depth)
        whiten(branch, x_fit)   # from the images trained on; a resumed run restores the same weights
        plan = recipe.from_args(args)   # the softmax peer's too (benchmarks/softmax_peer.py)
        plan.init_(branch)
        siamese = build_siamese(branch)
        if strategy.num_replicas_in_sync > 1:
            # XLA refuses variables of replicas on other devices (mirrored logical CPUs failed so).
            plan = dataclasses.replace(plan, xla=False)
        trainer = PairTrainer(siamese, classes=len(sampler.classes), id_weight=args.id_weight, head=args.head,
                              cosine=sphere, label_smoothing=plan.label_smoothing, episodes=args.metric_stage > 0,
                              stage_score=args.stage_score, pair_loss=args.pair_loss)
        plan.compile(trainer)
        trainer(np.zeros((2, *x_fit.shape[1:]), np.float32))   # build, so checkpoints can be restored

    clock, history = _fit(trainer, plan, args, run, x_fit, sampler)
    if run.suffix:   # a non-chief worker: the chief evaluates and saves the model
        checkpoint.discard(run.ckpt)
        print(f"training done on {run.suffix[1:]}; the chief evaluates and saves the model")
        return None

    # Mirror images are the same class where training flips them: then each image is also
    # scored by its mirror image's embedding (test-time augmentation; saved for prediction).
    scorer = evaluate.Scorer(siamese, flip=args.flip, shifts=plan.test_shifts)
    start = time.monotonic()
    test_emb = scorer.embed(x_test)   # once: the test metrics and the threshold's calibration
    # The classes trained on are scored as prediction scores them: by their learned directions
    # where the embedding has them and every training image would be an exemplar (the default).
    directions = _directions(trainer, sampler)
    learned = directions if args.shots is None else None
    test, roc_data, class_logits = evaluate.test_metrics(scorer, x_train, y_train, test_emb, y_test, args.shots,
                                                         learned=learned)
    batch = sampler.P * sampler.M
    seconds = max(clock.seconds, 1e-9)
    metrics = {
        "history": history,
        "test": test,
        "shots": args.shots,
        "test_time_flip": args.flip,
        "test_time_shifts": plan.test_shifts,
        "image_size": args.image_size,   # for reading; prediction reads the size from the model itself
        "train_seconds": clock.seconds,
        "eval_seconds": time.monotonic() - start,   # embedding + scoring every test image
        "train_steps": clock.steps,
        "train_images_per_s": clock.steps * batch / seconds,
        "train_pairs_per_s": clock.steps * distribute.pairs_per_step(strategy, batch) / seconds,
        "config": dict(vars(args), split=split, data_source=ds.source,
                       classes=[ds.class_names[int(c)] for c in seen]),
    }
    if len(unseen):
        metrics.update(episodes(scorer, ds.x_test, ds.y_test, unseen))
    # After eval_seconds, which times the test metrics alone (the benchmark divides by it).
    threshold = evaluate.calibrate(scorer, test_emb, y_test, args.shots)   # for --reject
    if threshold and learned:   # and for the training classes scored by their directions
        threshold["learned"] = evaluate.calibrate(scorer, test_emb, y_test, args.shots, learned=learned)
    metrics["retrieval"] = evaluate.retrieval(scorer, test_emb, y_test)
    confidence, reliability = evaluate.calibrate_confidence(*class_logits, y_test)   # P(class | query)
    metrics["confidence"] = confidence

    named = {ds.class_names[int(c)]: v for c, v in directions.items()} if directions else None
    artifacts.save(run.out, siamese, metrics, threshold=threshold, confidence=confidence, directions=named,
                   fix=f"the trained weights are kept: free some space and continue with {run.again}")
    checkpoint.discard(run.ckpt)   # the model is saved: nothing is left to resume
    if not args.no_plots:
        from . import plots
        plots.training_curves(history, run.out / "training_curves.png")
        plots.roc(*evaluate.roc_curve(*roc_data), test["roc_auc"], run.out / "roc.png")
        if reliability:
            plots.reliability(reliability, {"P(class)": confidence["ece"],
                                            "P(same) of the best class": confidence["ece_p_same"]},
                              run.out / "reliability.png", confidence["bins"])
        plots.embedding_map(test_emb, y_test, ds.class_names, run.out / "embedding_map.png")
    report(metrics, run.out, threshold)
    return metrics


def _directions(trainer, sampler):
    """{class id: (D,) vector}: the cosine identification softmax's learned class directions,
    saved beside the model for prediction; None without one (a free embedding has a Dense one)."""
    if not isinstance(trainer.identity, CosineClassifier):
        return None
    w = keras.ops.convert_to_numpy(trainer.identity.w).T
    return {int(c): w[k] for k, c in enumerate(sampler.classes)}


def rotated_classes(x, y):
    """--rotate-classes: each class also turned by 90, 180 and 270 degrees, each turn a class
    of its own (new ids above the data's): four times the classes to learn similarity from,
    for data such as characters whose turned forms are not other classes of the data."""
    offset = int(y.max()) + 1
    return (np.concatenate([np.rot90(x, k, axes=(1, 2)) for k in range(4)]),
            np.concatenate([y + k * offset for k in range(4)]))


def _start(args):
    """Where this run writes (--out, its checkpoint folder) and, with --resume, the interrupted
    run's flags. Refuses to start over an interrupted run, and flags that cannot work."""
    suffix = distribute.worker_suffix(args.strategy)   # '' on the process that saves the model
    out = artifacts.check_writable(args.out)
    ckpt = out / (CHECKPOINT + suffix)
    if not suffix:
        artifacts.remove_stale_temps(out)   # a killed run's; main holds the lock on --out
    again = ("every worker's command plus --resume" if args.strategy == "multiworker"
             else f"`python Cifar-100.py --out {out} --resume`")
    if args.resume:
        args = _resume_args(args, ckpt)
        if distribute.worker_suffix(args.strategy) != suffix:
            raise UserError("resume a multi-worker run with every worker's own command plus --resume")
    elif checkpoint.read_config(ckpt) is not None:
        raise UserError(f"{out} holds an interrupted run; continue it with {again}, or delete {ckpt} to start over")
    else:
        checkpoint.discard(ckpt)   # leftovers of a run killed before it began, or while deleting them
    if args.epochs is None and not args.max_minutes:
        if args.resume:   # the interrupted run had --max-minutes alone: it has no end without one
            raise UserError("the interrupted run has no --epochs cap; resume it with --max-minutes M")
        args.epochs = EPOCHS[args.recipe]
    if args.strategy == "multiworker" and args.max_minutes:
        # Each worker's clock would stop it at another step, leaving the others waiting forever.
        raise UserError("--max-minutes cannot be used with --strategy multiworker; limit the run with --epochs")
    if args.per_class < 2:
        raise UserError("--per-class must be at least 2 so every batch has same-class pairs")
    if args.head == "tied" and not args.id_weight:
        raise UserError("--head tied (the default) trains only with the identification softmax beside the pair "
                        "loss (alone it stalled: docs/benchmarks.md, One-shot transfer); keep --id-weight above 0 "
                        "or pass --head free")
    if args.rotate_classes and args.hard_negatives:
        raise UserError("--rotate-classes and --hard-negatives cannot be combined (turned classes have "
                        "no superclass); drop one")
    if args.tensorboard:
        try:
            Path(args.tensorboard).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot write TensorBoard logs to {args.tensorboard} ({e.strerror or e}); "
                            "pass a writable --tensorboard DIR") from None
    return args, Namespace(out=out, ckpt=ckpt, suffix=suffix, again=again)


def _sampler(args, ds, y_train, seen):
    """Class-balanced batches of the seen classes (with CIFAR-100 superclasses for
    --hard-negatives), after checking that the flags fit the data."""
    pairs.require_shots(y_train, args.shots)
    coarse = None
    if ds.coarse_train is not None:
        coarse = {int(c): int(ds.coarse_train[ds.y_train == c][0]) for c in seen}
    sampler = BalancedBatches(y_train, args.batch_size, args.per_class,
                              seed=args.seed, coarse=coarse, hard_fraction=args.hard_negatives)
    if sampler.P < 2:
        raise UserError(f"--batch-size {args.batch_size} holds fewer than 2 classes of "
                        f"--per-class {args.per_class}; raise --batch-size")
    return sampler


def _describe(ds, y_train, seen, unseen, sampler):
    batch = sampler.P * sampler.M
    print(f"data: {ds.source or 'keras.datasets.cifar100'}: {len(y_train)} training images, "
          f"{len(seen)} classes" + (f" ({len(unseen)} held out)" if len(unseen) else ""))
    print(f"batches: {sampler.P} classes x {sampler.M} images = {batch} images, "
          f"{batch * (batch - 1) // 2} pairs; {sampler.steps} steps per epoch")


def _fit(trainer, plan, args, run, x_train, sampler):
    """Train with a checkpoint after every epoch; returns the clock and the per-epoch history.
    Ctrl-C / SIGTERM stop with one line saying how to resume; a NaN loss saves nothing."""
    replicas = trainer.distribute_strategy.num_replicas_in_sync
    if replicas > 1:
        batch = sampler.P * sampler.M
        print(f"{args.strategy}: {replicas} replicas, {batch // replicas} images each per step")
    with trainer.distribute_strategy.scope():   # where the optimizer's variables are built
        state = checkpoint.restore(trainer, run.ckpt) if args.resume else checkpoint.State()
    checkpoint.check_room(run.out, run.ckpt, trainer)
    run.ckpt.mkdir(exist_ok=True)
    checkpoint.write_config(run.ckpt, vars(args))
    # The clock goes on from what the interrupted run spent: its budget and the rate schedule's
    # place (steps from the optimizer's restored counter, seconds from here) carry over.
    clock = Clock(args.max_minutes * 60 if args.max_minutes else None, state.seconds, state.steps)
    if args.resume:
        spent = f", {state.seconds / 60:.1f} of {args.max_minutes:g} minutes trained" if args.max_minutes else ""
        print(f"continuing from epoch {state.epoch}{spent}")
    checkpointer = checkpoint.Checkpointer(run.ckpt, state, run.again, clock)   # weights, optimizer, history
    schedule = plan.schedule_(args.epochs and args.epochs * sampler.steps, clock)
    small = plan.small_first_(schedule, state.steps)   # --progressive; None when off
    callbacks = [
        clock,
        schedule,
        *([small] if small else []),
        MetricStage(schedule, args.metric_stage, args.stage_lr),   # after the schedule: it scales its rate
        checkpointer,
        keras.callbacks.TerminateOnNaN(),
        EpochLine(clock, args.epochs),   # Keras' progress bar, headed by the epochs or minutes asked for
    ]
    if args.tensorboard:   # loss, pair accuracy and learning rate per epoch
        callbacks.append(TensorBoard(args.tensorboard, run.again))
    spent_before = clock.out_of_time   # killed after its budget ran out, while evaluating or saving
    if spent_before:
        print(f"the run has trained its {args.max_minutes:g} minutes (--max-minutes) already; evaluating it")
    _stop_on_signals()
    try:
        last_step = args.epochs and args.epochs * sampler.steps
        if not spent_before:   # fit would train a step at least
            trainer.fit(pipeline(x_train, sampler, state.epoch * sampler.steps, args.seed, last_step,
                                 flip=args.flip, distortion=args.distort, alternate=plan.alternate_flips,
                                 small=small),
                        epochs=args.epochs or UNCAPPED, initial_epoch=state.epoch, steps_per_epoch=sampler.steps,
                        callbacks=callbacks, shuffle=False,
                        verbose=1 if sys.stdout.isatty() else 2)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the last finished epoch is saved in {run.ckpt}; continue with {run.again}",
              file=sys.stderr)
        sys.exit(130)
    history = checkpointer.history
    if not all(map(math.isfinite, history["loss"])):
        checkpoint.discard(run.ckpt)
        raise UserError(f"the loss became NaN in epoch {len(history['loss'])}; nothing was saved "
                        f"and {run.out} is untouched; try a lower --lr (now {args.lr})")
    if clock.out_of_time and not spent_before:
        print(f"stopped after {args.max_minutes} minutes (--max-minutes), in epoch {clock.epoch + 1}")
    return clock, history


def _resume_args(args, ckpt):
    """--resume: the interrupted run's flags, with this call's --no-plots and, if given, its
    --max-minutes (the run's budget in all: the minutes trained before the interruption count)."""
    saved = checkpoint.read_config(ckpt)
    if saved is None:
        raise UserError(f"nothing to resume: {ckpt} holds no interrupted run; start one without --resume")
    for flag, default in (("tensorboard", None), ("recipe", "photos"), ("width", 0.5), ("depth", 2), ("embedding", "free"), ("id_weight", 0.0),
                          ("flip", True), ("distort", 0.0),
                          ("optimizer", "adam"), ("label_smoothing", 0.0), ("weight_decay", 0.0), ("ema", 0.0), ("xla", False),
                          ("alternate_flips", False), ("test_shifts", False), ("progressive", 0.0),
                          ("head", "free"), ("rotate_classes", False), ("test_fraction", data.TEST_FRACTION),
                          ("metric_stage", 0.0), ("stage_lr", 1.0), ("stage_score", "head"), ("pair_loss", "always"),
                          ("image_size", data.IMAGE_SIZE)):
        saved.setdefault(flag, default)   # a run saved before the flag existed
    saved.update(resume=True, max_minutes=args.max_minutes or saved.get("max_minutes"), no_plots=args.no_plots)
    print(f"resuming the interrupted run in {ckpt.parent} with its own flags")
    return Namespace(**saved)


def _only(classes, x, y):
    """The images of `classes`; without held-out classes, the arrays themselves (no copy)."""
    keep = np.isin(y, classes)
    return (x, y) if keep.all() else (x[keep], y[keep])


def _stop_on_signals():
    """SIGTERM (kill) and SIGINT (Ctrl-C) both stop training cleanly. SIGINT is set explicitly
    because a shell starts background jobs (`python Cifar-100.py &`) with it ignored."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def episodes(scorer, x, y, unseen=None):
    """Few-shot (FEW_SHOT) and open-set (OPEN_SET) episodes, EPISODES each, seeded, over the images
    of the `unseen` classes (None: all), each image embedded once: {"few_shot": .., "open_set": ..}.
    Ways are capped at the classes there are (open-set: half of them known, half unknown)."""
    mask = np.isin(y, unseen) if unseen is not None else np.ones(len(y), bool)
    emb, labels = scorer.embed(x[mask]), y[mask]
    counts = np.unique(labels, return_counts=True)[1]
    n = len(counts)
    return {
        "few_shot": {f"{min(w, n)}-way-{k}-shot": evaluate.few_shot(scorer, emb, labels, min(w, n), k, EPISODES)
                     for w, k in FEW_SHOT},
        "open_set": {f"{min(w, n // 2)}-way-{k}-shot": evaluate.open_set(scorer, emb, labels, min(w, n // 2), k,
                                                                          EPISODES)
                     for w, k in OPEN_SET if n >= 2 and counts.min() > k},   # a query left after k support
    }


def report(metrics, out, threshold=None):
    t = metrics["test"]
    print(f"trained {metrics['train_steps']} steps in {metrics['train_seconds']:.0f} s "
          f"({metrics['train_images_per_s']:.0f} images/s, {metrics['train_pairs_per_s']:.0f} pairs/s)")
    print(f"test verification: accuracy {t['verification_accuracy']:.3f}, ROC AUC {t['roc_auc']:.3f} "
          f"({evaluate.VERIFICATION_PAIRS} balanced pairs)")
    how = (f"by the learned class directions; by all training images as exemplars: top-1 {t['top1_exemplars']:.3f}"
           if "top1_exemplars" in t else f"{metrics['shots'] or 'all'} training images per class as exemplars")
    print(f"test classification: top-1 {t['top1']:.3f}, top-5 {t['top5']:.3f} "
          f"({t['classes']}-way, {how}, {t['test_images']} images)")
    r = metrics.get("retrieval")
    if r:
        print(f"test retrieval, each test image against the others by P(same): Recall@1 {r['recall@1']:.3f}, "
              f"Recall@5 {r['recall@5']:.3f}, MAP@R {r['map@r']:.3f} ({r['queries']} images)")
    c = metrics.get("confidence")
    if c:
        print(f"class confidence P(class | image): temperature {c['temperature']:.4g} fitted on {c['fitted_on']} "
              f"test images; expected calibration error on the other {c['checked_on']}: {c['ece']:.3f} "
              f"(the best class's P(same) read as one: {c['ece_p_same']:.3f})")
    for name, r in metrics.get("few_shot", {}).items():
        print(f"few-shot {name} on unseen classes: {100 * r['mean']:.1f}% ± {100 * r['ci95']:.1f}% "
              f"({r['episodes']} episodes)")
    for name, r in metrics.get("open_set", {}).items():
        print(f"open-set {name} on unseen classes (as many unknown): {100 * r['mean']:.1f}% ± "
              f"{100 * r['ci95']:.1f}%, AUROC {r['auroc']:.3f} ({r['episodes']} episodes)")
    if threshold:
        print(f"rejection threshold: P(same) {threshold['threshold']:.3f} ({threshold['promise']} of the "
              f"training classes' test images; rejects {100 * threshold['unknown_rejected']:.0f}% of unknown)"
              + (f"; {threshold['learned']['threshold']:.3f} where they are scored by their learned directions "
                 f"(rejects {100 * threshold['learned']['unknown_rejected']:.0f}%)" if threshold.get("learned") else ""))
    print(f"saved {artifacts.JSON}, {artifacts.WEIGHTS}, {artifacts.KERAS}, {artifacts.METRICS}"
          + (f", {artifacts.THRESHOLD}" if threshold else "")
          + (f", {artifacts.DIRECTIONS}" if (Path(out) / artifacts.DIRECTIONS).is_file() else "")
          + (f", {artifacts.CONFIDENCE}" if metrics.get("confidence") else "") + f" in {out}")
