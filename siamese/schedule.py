"""The time budget (--max-minutes), the learning-rate schedule and the epoch line, as Keras callbacks."""
import math
import time

import keras


class Clock(keras.callbacks.Callback):
    """Counts epochs, steps and seconds of training, and stops training at the time budget
    (--max-minutes). A resumed run starts from what the interrupted one had spent (its
    checkpoint records both), so the budget is the run's, not each session's."""

    def __init__(self, max_seconds, spent=0.0, steps=0):
        super().__init__()
        self.max_seconds = max_seconds
        self.epoch = 0
        self.steps = steps
        self.spent = spent   # seconds trained before this session (--resume)
        self.start = None
        self.seconds = spent
        self.out_of_time = bool(max_seconds) and spent >= max_seconds

    def elapsed(self):
        """Seconds of training so far, this session's included."""
        return self.spent + (time.monotonic() - self.start if self.start is not None else 0.0)

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        self.seconds = self.elapsed()
        if self.max_seconds and self.seconds > self.max_seconds:
            self.out_of_time = self.model.stop_training = True


class RateSchedule(keras.callbacks.Callback):
    """The learning rate of every step, from the run's progress.

    cosine: a linear warm-up over `warmup_steps`, then cosine decay to 2% of the peak.
    linear: airbench's, a linear ramp from 0.2x the peak over the first 23% of the run, then a
    linear decay to 0.07x at its end.

    The run ends after --epochs or at --max-minutes, whichever comes first, so progress is the
    larger of the two fractions: a time-limited run still anneals to a low rate by its end
    instead of stopping at a high one. total_steps None: no epoch cap, the clock alone."""

    def __init__(self, peak, total_steps, clock, shape="cosine", warmup_steps=100, floor=0.02):
        super().__init__()
        if shape not in ("cosine", "linear"):
            raise ValueError(f"unknown rate schedule {shape!r}")
        self.peak, self.total_steps, self.clock, self.shape = peak, total_steps, clock, shape
        self.warmup_steps, self.floor = warmup_steps, floor

    def progress(self, step, seconds):
        progress = step / self.total_steps if self.total_steps else 0.0
        if self.clock.max_seconds:
            progress = max(progress, seconds / self.clock.max_seconds)
        return min(1.0, progress)

    def rate(self, step, seconds):
        progress = self.progress(step, seconds)
        if self.shape == "linear":
            up = 0.23
            if progress < up:
                return self.peak * (0.2 + 0.8 * progress / up)
            return self.peak * (1 - 0.93 * (progress - up) / (1 - up))
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        warmup = min(1.0, (step + 1) / self.warmup_steps)
        return self.peak * warmup * (self.floor + (1 - self.floor) * cosine)

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())   # restored by checkpoint.restore on --resume
        self.model.optimizer.learning_rate.assign(self.rate(step, self.clock.seconds))


class SmallFirst(keras.callbacks.Callback):
    """--progressive F: the first F of the run's progress trains on smaller images (the
    pipeline asks `small(step)` of every batch it makes; siamese.pipeline.small_side says how
    small). With a fixed number of steps and no time budget the switch is a step known before
    the first batch, so a resumed run switches where an uninterrupted one does; under a time
    budget it is the first step whose progress (the rate schedule's) reaches F, and the few
    batches the pipeline made ahead of it stay small."""

    def __init__(self, schedule, fraction, start_step=0):
        super().__init__()
        self.schedule, self.fraction = schedule, fraction
        self.until = math.inf
        if not schedule.clock.max_seconds and schedule.total_steps:
            self.until = math.ceil(fraction * schedule.total_steps)
        elif schedule.progress(start_step, schedule.clock.seconds) >= fraction:
            self.until = start_step   # resumed past the switch

    def small(self, step):
        return step < self.until

    def on_train_batch_begin(self, batch, logs=None):
        if self.until == math.inf:
            step = int(self.model.optimizer.iterations.numpy())
            if self.schedule.progress(step, self.schedule.clock.seconds) >= self.fraction:
                self.until = step


class EpochLine(keras.callbacks.ProgbarLogger):
    """Keras' progress bar (verbose 1) or per-epoch log line (verbose 2), headed by what the
    user asked for: `Epoch 3/30`, and with --max-minutes the minutes trained of the budget,
    `Epoch 3 (1.2 of 5 minutes)`. With --max-minutes alone fit runs to an epoch count the clock
    never reaches, which Keras' own header would print (`Epoch 3/1000000`)."""

    def __init__(self, clock, epochs):
        super().__init__()
        self.clock, self.cap = clock, epochs

    def set_params(self, params):
        super().set_params(params)
        self.epochs = 1   # Keras prints its header only for more than one epoch: ours replaces it

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        if self.verbose:
            print(self.header(epoch), flush=True)

    def header(self, epoch):
        line = f"Epoch {epoch + 1}" + (f"/{self.cap}" if self.cap else "")
        if self.clock.max_seconds:
            # An epoch can begin just past the budget (checked after each step), and runs one step.
            spent = min(self.clock.elapsed(), self.clock.max_seconds)
            line += f" ({spent / 60:.1f} of {self.clock.max_seconds / 60:g} minutes)"
        return line
