"""Training speed of the branch at each --width, beside the old branch (the machine's speed mode).

    python benchmarks/speed.py                    # the default widths, 10 s each
    python benchmarks/speed.py --widths 0.5 1 2 --seconds 20
    python benchmarks/speed.py --widths 0.5 1 --sizes 32 64   # --image-size's cost

Each line: one train step of ours (PairTrainer: pair loss + identification softmax, batch 128,
random images) repeated for --seconds, images/s, forward MFLOP per image (convolutions and
Dense layers, multiply-adds x 2), weights. The old branch (shipped until 192bb0b: a stride-2 stem,
one conv per stage, a Dense layer on the flattened 4x4 map) is measured first and last: these
2-core machines switch between speed modes about 2x apart, so a width's images/s mean something
only beside the old branch's, measured in the same run.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from siamese import data, model, recipe  # noqa: E402


def old_branch():
    """The branch of 192bb0b, as a fixed yardstick for the machine's speed."""
    def conv_bn(x, filters, strides=1):
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
        return layers.ReLU()(layers.BatchNormalization(momentum=0.9)(x))
    image = keras.Input(data.image_shape(), name="image")
    x = conv_bn(layers.Rescaling(1 / 255)(image), 48, strides=2)
    for filters in (96, 192):
        x = conv_bn(layers.MaxPooling2D()(x), filters)
    x = layers.Dense(512, use_bias=False)(layers.Flatten()(x))
    x = layers.Dense(128)(layers.ReLU()(layers.BatchNormalization(momentum=0.9)(x)))
    x = layers.Rescaling(128 ** 0.5)(layers.UnitNormalization()(x))
    return keras.Model(image, x, name="branch")


def mflop(branch):
    """Forward MFLOP per image: 2 x the multiply-adds of every Conv2D and Dense layer."""
    total = 0
    for layer in branch.layers:
        if isinstance(layer, layers.Conv2D):
            h, w = layer.output.shape[1:3]
            total += 2 * h * w * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, layers.Dense):
            total += 2 * int(np.prod(layer.kernel.shape))
    return total / 1e6


def images_per_s(branch, seconds, batch=128, classes=100, xla=True):
    trainer = model.PairTrainer(model.build_siamese(branch), classes=classes, id_weight=1.0, head="tied")
    recipe.Recipe(xla=xla).compile(trainer)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, *branch.input_shape[1:])).astype(np.float32)
    y = np.repeat(np.arange(batch // 2), 2)
    for _ in range(3):   # tracing and warm-up
        trainer.train_on_batch(x, y)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        trainer.train_on_batch(x, y)
        steps += 1
    return steps * batch / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0, 1.5, 2.0])
    p.add_argument("--sizes", type=int, nargs="+", default=[data.IMAGE_SIZE],
                   help="image sides in pixels, each width at each (--image-size; default: 32)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of training per branch (default: 10)")
    p.add_argument("--xla", choices=["on", "off", "both"], default="on",
                   help="compile the train step with XLA, as training does (default: on); both: each branch twice")
    args = p.parse_args(argv)
    xlas = {"on": [True], "off": [False], "both": [True, False]}[args.xla]
    old = ("old", None, data.IMAGE_SIZE, old_branch)
    branches = [old] + [(f"width {w:g}", w, s, lambda w=w, s=s: model.build_branch(width=w, size=s))
                        for w in args.widths for s in args.sizes] + [old]
    for name, width, size, build in branches:
        for xla in xlas:
            branch = build()
            print(json.dumps({"branch": name, "image_size": size, "xla": xla,
                "channels": None if width is None else model.widths(width),
                "images_per_s": round(images_per_s(branch, args.seconds, xla=xla)),
                "mflop_per_image": round(mflop(branch), 1), "weights_m": round(branch.count_params() / 1e6, 2)}),
                flush=True)


if __name__ == "__main__":
    main()
