"""Training: load data -> class-balanced batches -> every pair in a batch -> evaluate -> save.

Run through `python Cifar-100.py`; `main(args)` takes the parsed flags.
"""
import csv
import json
import math
import os
import shutil
import signal
import sys
import time
from argparse import Namespace

import keras
import numpy as np
import tensorflow as tf

from . import artifacts, data, evaluate, splits
from .errors import UserError
from .model import PairTrainer, build_siamese
from .pairs import BalancedBatches

CHECKPOINT = "checkpoint"   # sub-folder of --out holding an unfinished run's state
PAD = 2                     # translations of up to 2 pixels (4 scored ~2 points lower in short runs)
FEW_SHOT = [(5, 1), (5, 5), (20, 1)]   # (ways, shots) episodes on held-out classes
EPISODES = 600


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


class Clock(keras.callbacks.Callback):
    """Counts epochs and steps, and stops training at the time budget (--max-minutes)."""

    def __init__(self, max_seconds):
        super().__init__()
        self.max_seconds = max_seconds
        self.epoch = 0
        self.steps = 0
        self.start = None
        self.seconds = 0.0
        self.out_of_time = False

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        self.seconds = time.monotonic() - self.start
        if self.max_seconds and self.seconds > self.max_seconds:
            self.out_of_time = self.model.stop_training = True


class CosineSchedule(keras.callbacks.Callback):
    """Learning rate: linear warm-up, then cosine decay to 2% of the peak over the run.

    The run ends after --epochs or at --max-minutes, whichever comes first, so progress is the
    larger of the two fractions: a time-limited run still anneals to a low rate by its end
    instead of stopping at a high one."""

    def __init__(self, peak, total_steps, clock, warmup_steps=100, floor=0.02):
        super().__init__()
        self.peak, self.total_steps, self.clock = peak, total_steps, clock
        self.warmup_steps, self.floor = warmup_steps, floor

    def rate(self, step, seconds):
        progress = step / self.total_steps
        if self.clock.max_seconds:
            progress = max(progress, seconds / self.clock.max_seconds)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        warmup = min(1.0, (step + 1) / self.warmup_steps)
        return self.peak * warmup * (self.floor + (1 - self.floor) * cosine)

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())   # restored by BackupAndRestore on --resume
        self.model.optimizer.learning_rate.assign(self.rate(step, self.clock.seconds))


TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


def worker_suffix(strategy):
    """'' for the process that writes --out (a single process, or the chief of a multi-worker
    cluster), else e.g. '-worker-1': each other worker keeps its own checkpoint folder, so
    workers sharing a file system never write the same file. Validates TF_CONFIG."""
    if strategy != "multiworker":
        return ""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise UserError(f"--strategy multiworker needs TF_CONFIG set on every worker, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}'")
    try:
        config = json.loads(text)
        cluster, kind, index = config["cluster"], config["task"]["type"], config["task"]["index"]
        valid = (set(cluster) <= {"chief", "worker"} and all(isinstance(v, list) for v in cluster.values())
                 and kind in cluster and isinstance(index, int) and 0 <= index < len(cluster[kind]))
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise UserError(f"TF_CONFIG is not a valid cluster for --strategy multiworker: {text!r}; "
                        f"expected e.g. '{TF_CONFIG_EXAMPLE}' (task index 0 on the first machine, 1 on the second)")
    chief = ("chief", 0) if "chief" in cluster else ("worker", 0)   # TensorFlow's convention
    return "" if (kind, index) == chief else f"-{kind}-{index}"


def make_strategy(name, devices=None):
    if name == "mirrored":   # all local GPUs, or the devices given (e.g. /cpu:0,/cpu:1)
        return tf.distribute.MirroredStrategy(devices.split(",") if devices else None)
    if name == "multiworker":   # the cluster and this worker's place in it come from TF_CONFIG
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def pipeline(x, sampler, first_epoch, epochs, seed):
    """tf.data over the class-balanced batches of epochs first_epoch..epochs-1.

    Batches are drawn up front as index arrays (a few MB even for 30 epochs); images stay
    uint8 until a batch is gathered and augmented in parallel `map` calls. One dataset spans
    all epochs (fit runs it with steps_per_epoch), so no per-epoch iterator is torn down."""
    index = np.stack([sampler.batch(e, s)[0] for e in range(first_epoch, epochs) for s in range(sampler.steps)])
    steps = np.arange(len(index)) + first_epoch * sampler.steps   # seeds the augmentation
    def gather(idx):   # in numpy: a tf.constant of x would copy it, and its graph again
        return tf.ensure_shape(tf.numpy_function(lambda i: x[i], [idx], tf.uint8, stateful=False),
                               (None, *x.shape[1:]))

    def make_batch(idx, step):
        batch = augment(gather(idx), tf.stack([tf.constant(seed, tf.int64), step]))
        return tf.cast(batch, tf.float32), tf.gather(sampler.labels, idx)

    # Every worker of a multi-worker run builds this same dataset; DATA sharding gives each
    # its share of every global batch (as MirroredStrategy splits it between devices).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = tf.data.Dataset.from_tensor_slices((index, steps)).with_options(options)
    return (ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def _finished_epochs(ckpt):
    """Epochs an interrupted run completed, from BackupAndRestore's own record (0 if none)."""
    path = ckpt / "training_metadata.json"
    return int(json.loads(path.read_text()).get("epoch", 0)) if path.is_file() else 0


def _read_history(path):
    history = {"loss": [], "accuracy": []}
    if path.is_file():
        with open(path) as f:
            for row in csv.DictReader(f):
                for key in history:
                    history[key].append(float(row[key]))
    return history


def _resume_args(args, ckpt):
    """--resume: the interrupted run's flags, with this call's --max-minutes and --no-plots."""
    config = ckpt / "config.json"
    if not config.is_file():
        raise UserError(f"nothing to resume: {ckpt} holds no interrupted run; start one without --resume")
    saved = json.loads(config.read_text())
    saved.update(resume=True, max_minutes=args.max_minutes, no_plots=args.no_plots)
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


def main(args):
    suffix = worker_suffix(args.strategy)   # '' on the process that saves the model
    out = artifacts.check_writable(args.out)
    ckpt = out / (CHECKPOINT + suffix)
    again = ("every worker's command plus --resume" if args.strategy == "multiworker"
             else f"`python Cifar-100.py --out {out} --resume`")
    if args.resume:
        args = _resume_args(args, ckpt)
        if worker_suffix(args.strategy) != suffix:
            raise UserError("resume a multi-worker run with every worker's own command plus --resume")
    elif ckpt.exists():
        raise UserError(f"{out} holds an interrupted run; continue it with {again}, or delete {ckpt} to start over")
    if args.strategy == "multiworker" and args.max_minutes:
        # Each worker's clock would stop it at another step, leaving the others waiting forever.
        raise UserError("--max-minutes cannot be used with --strategy multiworker; limit the run with --epochs")
    keras.utils.set_random_seed(args.seed)

    ds = data.load(args.data_dir, getattr(args, "test_fraction", data.TEST_FRACTION), args.seed)
    seen, unseen, split = splits.holdout(ds, splits.parse(args.holdout), args.seed)
    x_train, y_train = _only(seen, ds.x_train, ds.y_train)
    x_test, y_test = _only(seen, ds.x_test, ds.y_test)
    smallest = np.unique(y_train, return_counts=True)[1].min()
    if args.shots > smallest:
        raise UserError(f"--shots {args.shots} is more than the smallest class has ({smallest} "
                        "training images); lower --shots")
    if args.per_class < 2:
        raise UserError("--per-class must be at least 2 so every batch has same-class pairs")
    coarse = None
    if ds.coarse_train is not None:
        coarse = {int(c): int(ds.coarse_train[ds.y_train == c][0]) for c in seen}
    sampler = BalancedBatches(y_train, args.batch_size, args.per_class,
                              seed=args.seed, coarse=coarse, hard_fraction=args.hard_negatives)
    if sampler.P < 2:
        raise UserError(f"--batch-size {args.batch_size} holds fewer than 2 classes of "
                        f"--per-class {args.per_class}; raise --batch-size")
    batch = sampler.P * sampler.M
    print(f"data: {ds.source or 'keras.datasets.cifar100'}: {len(y_train)} training images, "
          f"{len(seen)} classes" + (f" ({len(unseen)} held out)" if len(unseen) else ""))
    print(f"batches: {sampler.P} classes x {sampler.M} images = {batch} images, "
          f"{batch * (batch - 1) // 2} pairs; {sampler.steps} steps per epoch")

    strategy = make_strategy(args.strategy, args.devices)
    if strategy.num_replicas_in_sync > 1:
        print(f"{args.strategy}: {strategy.num_replicas_in_sync} replicas, "
              f"{batch // strategy.num_replicas_in_sync} images each per step")
    with strategy.scope():
        siamese = build_siamese()
        trainer = PairTrainer(siamese)
        trainer.compile(optimizer=keras.optimizers.Adam(args.lr))   # rate set by CosineSchedule
        trainer(np.zeros((2, *data.IMAGE_SHAPE), np.float32))   # build, so checkpoints can be restored

    ckpt.mkdir(exist_ok=True)
    (ckpt / "config.json").write_text(json.dumps(vars(args)))
    clock = Clock(args.max_minutes * 60 if args.max_minutes else None)
    callbacks = [
        clock,
        CosineSchedule(args.lr, args.epochs * sampler.steps, clock),
        keras.callbacks.BackupAndRestore(str(ckpt), delete_checkpoint=False),
        keras.callbacks.CSVLogger(str(ckpt / "history.csv"), append=True),
        keras.callbacks.TerminateOnNaN(),
    ]
    _stop_on_signals()
    try:
        first_epoch = _finished_epochs(ckpt) if args.resume else 0
        trainer.fit(pipeline(x_train, sampler, first_epoch, args.epochs, args.seed),
                    epochs=args.epochs, steps_per_epoch=sampler.steps, callbacks=callbacks, shuffle=False,
                    verbose=1 if sys.stdout.isatty() else 2)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the last finished epoch is saved in {ckpt}; continue with {again}",
              file=sys.stderr)
        sys.exit(130)
    history = _read_history(ckpt / "history.csv")
    if not all(map(math.isfinite, history["loss"])):
        shutil.rmtree(ckpt)
        raise UserError(f"the loss became NaN in epoch {len(history['loss'])}; nothing was saved "
                        f"and {out} is untouched; try a lower --lr (now {args.lr})")
    if suffix:   # a non-chief worker: the chief evaluates and saves the model
        shutil.rmtree(ckpt)
        print(f"training done on {suffix[1:]}; the chief evaluates and saves the model")
        return None
    if clock.out_of_time:
        print(f"stopped after {args.max_minutes} minutes (--max-minutes), in epoch {clock.epoch + 1}")

    replicas = strategy.num_replicas_in_sync
    pairs_per_step = replicas * (batch // replicas) * (batch // replicas - 1) // 2
    seconds = max(clock.seconds, 1e-9)
    scorer = evaluate.Scorer(siamese)
    start = time.monotonic()
    test, roc_data = evaluate.test_metrics(scorer, x_train, y_train, x_test, y_test, args.shots)
    eval_seconds = time.monotonic() - start
    metrics = {
        "history": history,
        "test": test,
        "shots": args.shots,
        "train_seconds": clock.seconds,
        "eval_seconds": eval_seconds,   # embedding + scoring every test image (the benchmark's eval speed)
        "train_steps": clock.steps,
        "train_images_per_s": clock.steps * batch / seconds,
        "train_pairs_per_s": clock.steps * pairs_per_step / seconds,
        "config": dict(vars(args), split=split, data_source=ds.source,
                       classes=[ds.class_names[int(c)] for c in seen]),
    }
    if len(unseen):
        metrics["few_shot"] = few_shot(scorer, ds.x_test, ds.y_test, unseen)
    artifacts.save(out, siamese, metrics)
    if not args.no_plots:
        from . import plots
        plots.training_curves(history, out / "training_curves.png")
        plots.roc(*evaluate.roc_curve(*roc_data), test["roc_auc"], out / "roc.png")
    shutil.rmtree(ckpt)
    report(metrics, out)
    return metrics


def few_shot(scorer, x, y, unseen):
    mask = np.isin(y, unseen)
    emb, labels = scorer.embed(x[mask]), y[mask]
    n = len(np.unique(labels))   # N is capped at the number of unseen classes
    return {f"{min(w, n)}-way-{k}-shot": evaluate.few_shot(scorer, emb, labels, min(w, n), k, EPISODES)
            for w, k in FEW_SHOT}


def report(metrics, out):
    t = metrics["test"]
    print(f"trained {metrics['train_steps']} steps in {metrics['train_seconds']:.0f} s "
          f"({metrics['train_images_per_s']:.0f} images/s, {metrics['train_pairs_per_s']:.0f} pairs/s)")
    print(f"test verification: accuracy {t['verification_accuracy']:.3f}, ROC AUC {t['roc_auc']:.3f} "
          f"({evaluate.VERIFICATION_PAIRS} balanced pairs)")
    print(f"test classification: top-1 {t['top1']:.3f}, top-5 {t['top5']:.3f} "
          f"({t['classes']}-way, {metrics['shots']} exemplars per class, {t['test_images']} images)")
    for name, r in metrics.get("few_shot", {}).items():
        print(f"few-shot {name} on unseen classes: {100 * r['mean']:.1f}% ± {100 * r['ci95']:.1f}% "
              f"({r['episodes']} episodes)")
    print(f"saved {artifacts.JSON}, {artifacts.WEIGHTS}, {artifacts.METRICS} in {out}")
