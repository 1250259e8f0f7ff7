"""Siamese-network CIFAR-100 classifier: data, pairs, model, training, evaluation, artifacts."""
import os

# TensorFlow does not turn its oneDNN CPU kernels on for every x86 CPU: on this project's AVX2-only
# 2-core AMD EPYC machines it left them off (unset ran as fast as TF_ENABLE_ONEDNN_OPTS=0). With
# them on, training ran at 1,257-1,347 images/s there against ~890 (10-minute benchmarks), and
# the branch's forward + backward pass on 120 images took 79 ms instead of 126. TensorFlow reads
# the variable once, when it is imported: so it is set here, before any module of the package
# imports TensorFlow. TF_ENABLE_ONEDNN_OPTS=0 in the environment wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
