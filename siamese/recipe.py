"""The training recipe: optimizer, rate schedule, label smoothing, weight averaging, compilation.

Ours (train.py) and the softmax peer (benchmarks/softmax_peer.py) both take their recipe from
here, from the same flags, so that only the loss differs between them. Each part was measured
one at a time, side by side with the peer (docs/benchmarks.md, "The recipe, part by part").
"""
from dataclasses import asdict, dataclass

import keras
from keras import ops

from .schedule import RateSchedule

# airbench94's SGD, rescaled to a mean loss over our batch of 128 (airbench sums the loss over
# 1,024 images, with rates "per 1,024 examples" divided by 1 + 1/(1 - momentum)): lr 11.5 and
# weight decay 0.0153 become a peak rate of 11.5 * 128 / (1024 * (1 + 1 / 0.15)) = 0.19 on the
# mean loss and, decoupled as Keras applies it (PyTorch's coupled decay is amplified by the
# momentum, 1 / 0.15), a decay of 0.0153 * 128 / 1024 / 0.15 = 0.0128 per step at rate 1.
SGD_LR = 11.5 * 128 / (1024 * (1 + 1 / 0.15))
SGD_MOMENTUM = 0.85
SGD_DECAY = 0.0153 * 128 / 1024 / (1 - SGD_MOMENTUM)


@dataclass(frozen=True)
class Recipe:
    optimizer: str = "adam"        # adam | sgd (Nesterov, weight decay)
    lr: float = 2e-3               # peak rate
    schedule: str = "cosine"       # cosine: warm-up + cosine; linear: airbench's ramp up and down
    label_smoothing: float = 0.0   # on the identification softmax (the peer's only softmax)
    ema: float = 0.0               # momentum of a moving average of the weights, evaluated at the end; 0: off
    # jit_compile the train step. Off: on the 2-core CPU, side by side, XLA trained 1.4-1.5x slower
    # than TensorFlow's oneDNN kernels (docs/benchmarks.md, "The recipe"); on a GPU, try --xla.
    xla: bool = False
    alternate_flips: bool = False  # with flips: each image mirrored every other epoch, not at random
    test_shifts: bool = True       # test-time views: also each image moved by a pixel (evaluate.views)

    def optimizer_(self):
        if self.optimizer == "sgd":
            opt = keras.optimizers.SGD(self.lr, momentum=SGD_MOMENTUM, nesterov=True,
                                       weight_decay=SGD_DECAY / self.lr, **self._ema())
        else:
            opt = keras.optimizers.Adam(self.lr, **self._ema())
        # The cosine softmax's scale and the pair head set the sharpness of their sigmoid /
        # softmax: decaying them would only blunt the scores.
        opt.exclude_from_weight_decay(var_names=["scale", "head"])
        return opt

    def _ema(self):
        return dict(use_ema=True, ema_momentum=self.ema) if self.ema else {}

    def compile(self, model, **kwargs):
        """Compile `model` (ours or the peer) with this recipe's optimizer and compilation."""
        model.compile(optimizer=self.optimizer_(), jit_compile=self.xla, **kwargs)

    def schedule_(self, total_steps, clock):
        """The per-step rate callback: warm-up + cosine (Adam), or airbench's linear ramp."""
        return RateSchedule(self.lr, total_steps, clock, shape=self.schedule)

    def as_dict(self):
        return asdict(self)


def from_args(args):
    """The recipe of a parsed Cifar-100.py command line (bench.py passes the peer the same)."""
    return Recipe(optimizer=args.optimizer, lr=args.lr, schedule="linear" if args.optimizer == "sgd" else "cosine",
                  label_smoothing=args.label_smoothing, ema=args.ema, xla=args.xla,
                  alternate_flips=args.alternate_flips, test_shifts=args.test_shifts)


def identity_loss(labels, logits, smoothing=0.0):
    """Mean softmax cross-entropy of integer labels, with label smoothing: ours' identification
    softmax and the peer's classifier alike."""
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    if not smoothing:
        return ops.mean(ops.sparse_categorical_crossentropy(labels, logits, from_logits=True))
    targets = ops.one_hot(labels, ops.shape(logits)[-1])
    return ops.mean(keras.losses.categorical_crossentropy(targets, logits, from_logits=True,
                                                          label_smoothing=smoothing))
