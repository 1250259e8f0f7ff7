"""TensorBoard logs (--tensorboard DIR) written with TensorFlow alone.

Keras' TensorBoard callback writes scalars through `tf.summary.scalar`, which TensorFlow 2.21
delegates to the `tensorboard` package, no longer installed with it. The same record (a float32
tensor tagged for TensorBoard's scalars plugin) is written here with TensorFlow's own
`tf.summary.write`, so logging needs no extra package; viewing them does (`pip install tensorboard`).
"""
import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

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
    """keras.callbacks.TensorBoard (loss, accuracy and learning rate per epoch), no graph."""

    def __init__(self, log_dir):
        super().__init__(log_dir, write_graph=False)

    @property
    def summary(self):
        return _Summary()
