"""Siamese-network CIFAR-100 classifier: data, pairs, model, training, evaluation, artifacts."""
import os

# TensorFlow turns its oneDNN CPU kernels on only for x86 CPUs with AVX-512-class features, so
# on AVX2-only CPUs (this project's 2-core AMD EPYC machines, many laptops) convolutions run on
# its slower default kernels. With oneDNN our training step ran 1.3x faster there (1.6x for the
# branch alone). It is read once, when TensorFlow is imported: that is why it is set here, before
# any module of the package imports TensorFlow. TF_ENABLE_ONEDNN_OPTS=0 in the environment wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
