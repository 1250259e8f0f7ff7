"""Siamese-network CIFAR-100 classifier: data, pairs, model, training, evaluation, artifacts."""
import os

# TensorFlow does not turn its oneDNN CPU kernels on for every x86 CPU: on this project's AVX2-only
# AMD EPYC machines it left them off, and training runs markedly faster with them on
# (docs/benchmarks.md, "oneDNN: TensorFlow's CPU kernels"). TensorFlow reads the variable once,
# when it is imported: so it is set here, before any module of the package imports TensorFlow.
# TF_ENABLE_ONEDNN_OPTS=0 in the environment wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
