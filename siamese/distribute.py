"""tf.distribute: which strategy trains, and which process of a multi-worker cluster saves."""
import json
import os

import tensorflow as tf

from .errors import UserError

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


def pairs_per_step(strategy, batch):
    """Pairs scored per step: each replica scores the pairs within its share of the batch."""
    replicas = strategy.num_replicas_in_sync
    share = batch // replicas
    return replicas * share * (share - 1) // 2
