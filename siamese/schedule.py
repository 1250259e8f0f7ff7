"""The time budget (--max-minutes) and the learning-rate schedule, as Keras callbacks."""
import math
import time

import keras


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
    instead of stopping at a high one. total_steps None: no epoch cap, the clock alone."""

    def __init__(self, peak, total_steps, clock, warmup_steps=100, floor=0.02):
        super().__init__()
        self.peak, self.total_steps, self.clock = peak, total_steps, clock
        self.warmup_steps, self.floor = warmup_steps, floor

    def rate(self, step, seconds):
        progress = step / self.total_steps if self.total_steps else 0.0
        if self.clock.max_seconds:
            progress = max(progress, seconds / self.clock.max_seconds)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        warmup = min(1.0, (step + 1) / self.warmup_steps)
        return self.peak * warmup * (self.floor + (1 - self.floor) * cosine)

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())   # restored by checkpoint.restore on --resume
        self.model.optimizer.learning_rate.assign(self.rate(step, self.clock.seconds))
