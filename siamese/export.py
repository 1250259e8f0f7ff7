"""The trained model as a TensorFlow SavedModel, for serving without Keras or this project.

Keras 3's `model.export` writes one endpoint, the model's own call (two images -> P(same)); a
user of a metric model wants the embedding too, so the export is Keras' `ExportArchive` (what
`model.export` is built on) with two endpoints on the same variables:
  embed(images)        float32 (N, S, S, 3), pixels 0..255 -> float32 (N, D) embeddings (S: the model's size)
  p_same(left, right)  two such batches -> float32 (N,) P(same class)
Both serve what the tool itself scores with (`--embed`, `--pair`, every ranking): the
embedding is `evaluate.merged_embedding` with the test-time views the model was trained for
(the flip, the shifts: the saved Scorer's), traced from the same function, and P(same) is the
head on two such embeddings, not the network's own single-pass call. The first is also the
SavedModel's `serving_default` signature (TF Serving wants one).
"""
import keras
import tensorflow as tf

from . import artifacts, evaluate
from .model import parts


def saved_model(siamese, target, flip=False, shifts=False):
    """Write the SavedModel of `siamese`, embedding with the views `flip` / `shifts` (those of
    its `evaluate.Scorer`), to the folder `target` (new or empty), whole or not at all."""
    branch, head = parts(siamese)
    images = tf.TensorSpec((None, *branch.input_shape[1:]), tf.float32)
    archive = keras.export.ExportArchive()
    archive.track(siamese)

    def embed(x):
        return evaluate.merged_embedding(branch, x, flip, shifts)
    archive.add_endpoint("embed", embed, input_signature=[images])
    archive.add_endpoint("p_same", lambda a, b: evaluate.pair_score(head, embed(a), embed(b)),
                         input_signature=[images, images])

    def fill(folder):
        try:
            archive.write_out(str(folder), verbose=False)
        except tf.errors.OpError as e:   # TensorFlow's own write errors (a full disk, EIO) are not OSErrors
            raise OSError(e.message) from None
    artifacts.write_folder(target, fill, fix="free some space or pass another --export folder")
