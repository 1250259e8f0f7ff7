"""TensorBoard logs (--tensorboard DIR) written with TensorFlow alone.

Keras' TensorBoard callback writes scalars through `tf.summary.scalar`, which TensorFlow 2.21
delegates to the `tensorboard` package, no longer installed with it. The same record (a float32
tensor tagged for TensorBoard's scalars plugin) is written here with TensorFlow's own
`tf.summary.write`, so logging needs no extra package; viewing them does (`pip install tensorboard`).

TensorFlow writes the event files in C++; an OS error there (a full disk, EIO) comes back as a
`tf.errors.OpError` naming it, from whichever summary op met it (creating the writer, a write
whose queue flushes, closing it). That becomes one `error:` line like every other failed write.
"""
import contextlib
import re
import shutil

import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from . import artifacts
from .errors import UserError

_SCALAR = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR)


class _Summary:
    """tf.summary, except `scalar`."""

    def __getattr__(self, name):
        return getattr(tf.summary, name)

    @staticmethod
    def scalar(name, data, step=None, description=None):
        return tf.summary.write(name, tf.cast(data, tf.float32), step=step, metadata=_SCALAR)


class TensorBoard(keras.callbacks.TensorBoard):
    """keras.callbacks.TensorBoard (loss, accuracy and learning rate per epoch), no graph.

    A failed write stops training with a UserError ending in `again`, the command that continues
    the run; the callbacks before this one (the checkpoint) have done their part of the epoch."""

    def __init__(self, log_dir, again):
        super().__init__(log_dir, write_graph=False)
        self.again = again

    @property
    def summary(self):
        return _Summary()

    def on_train_begin(self, logs=None):
        with self._writing():
            super().on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        with self._writing():
            super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        with self._writing():
            super().on_train_end(logs)

    @contextlib.contextmanager
    def _writing(self):
        try:
            yield
        except tf.errors.OpError as e:
            raise UserError(f"could not write TensorBoard logs to {self.log_dir} ({_reason(e, self.log_dir)}); "
                            "training stopped, its checkpoint is whole and no model was saved; "
                            f"free some space and continue with {self.again}") from None


def _reason(error, folder):
    """The OS error in TensorFlow's message, `<op> <path>; No space left on device\n\t...`, with the
    room left when it is a full disk."""
    found = re.search(r"; ([^;\n]+)", error.message.split("\n")[0])
    text = found.group(1).strip() if found else type(error).__name__
    if isinstance(error, tf.errors.ResourceExhaustedError):   # ENOSPC and EDQUOT map to it
        try:
            text += f", {artifacts.megabytes(shutil.disk_usage(folder).free)} free"
        except OSError:
            pass
    return text
