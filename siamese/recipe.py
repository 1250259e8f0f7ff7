"""The training recipe: optimizer, rate schedule, label smoothing, weight averaging, compilation.

Ours (train.py) and the softmax peer (benchmarks/softmax_peer.py) both take their recipe from
here, from the same flags, so that only the loss differs between them. Each part was measured
one at a time, side by side with the peer (docs/benchmarks.md, "The recipe, part by part").
"""
from dataclasses import asdict, dataclass

import keras
import numpy as np
from keras import ops

from .schedule import RateSchedule, SmallFirst

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
    weight_decay: float = 0.0      # decoupled (AdamW) decay per unit of rate; 0: none with adam, airbench's with sgd
    ema: float = 0.0               # momentum of a moving average of the weights, evaluated at the end; 0: off
    # jit_compile the train step. Off: on the 2-core CPU, side by side, XLA trained 1.4-1.5x slower
    # than TensorFlow's oneDNN kernels (docs/benchmarks.md, "The recipe"); on a GPU, try --xla.
    xla: bool = False
    alternate_flips: bool = False  # with flips: each image mirrored every other epoch, not at random
    test_shifts: bool = True       # test-time views: also each image moved by a pixel (evaluate.views)
    identity_init: bool = True     # airbench's: each 3x3 conv's first filters pass their input channels through
    bias_rate: float = 1.0         # BatchNorm biases learn at this multiple of the rate (airbench: 64, with SGD)
    # The first share of the run on images 3/4 the side (24x24 at 32): a step then costs about
    # (3/4)^2 of one; the CIFAR-100 speedrun record trains its first quarter so (NOTES-frontier.md).
    progressive: float = 0.0

    def optimizer_(self):
        sgd, adam = keras.optimizers.SGD, keras.optimizers.Adam
        if self.bias_rate != 1:
            sgd, adam = _with_bias_rate(sgd, self.bias_rate), _with_bias_rate(adam, self.bias_rate)
        if self.optimizer == "sgd":
            opt = sgd(self.lr, momentum=SGD_MOMENTUM, nesterov=True, weight_decay=self.weight_decay or SGD_DECAY / self.lr,
                      **self._ema())
        else:
            opt = adam(self.lr, weight_decay=self.weight_decay or None, **self._ema())
        # The cosine softmax's scale and the pair head set the sharpness of their sigmoid /
        # softmax: decaying them would only blunt the scores.
        opt.exclude_from_weight_decay(var_names=["scale", "head"])
        return opt

    def _ema(self):
        return dict(use_ema=True, ema_momentum=self.ema) if self.ema else {}

    def init_(self, branch):
        """Initialise a freshly built branch (ours' or the peer's) as the recipe says."""
        if self.identity_init:
            identity_init(branch)

    def compile(self, model, **kwargs):
        """Compile `model` (ours or the peer) with this recipe's optimizer and compilation."""
        model.compile(optimizer=self.optimizer_(), jit_compile=self.xla, **kwargs)

    def schedule_(self, total_steps, clock):
        """The per-step rate callback: warm-up + cosine (Adam), or airbench's linear ramp."""
        return RateSchedule(self.lr, total_steps, clock, shape=self.schedule)

    def small_first_(self, schedule, start_step=0):
        """The --progressive callback, which the pipeline asks which batches are small; None when off."""
        return SmallFirst(schedule, self.progressive, start_step) if self.progressive else None

    def as_dict(self):
        return asdict(self)


def from_args(args):
    """The recipe of a parsed Cifar-100.py command line (bench.py passes the peer the same)."""
    return Recipe(optimizer=args.optimizer, lr=args.lr, schedule="linear" if args.optimizer == "sgd" else "cosine",
                  label_smoothing=args.label_smoothing, weight_decay=args.weight_decay, ema=args.ema, xla=args.xla,
                  alternate_flips=args.alternate_flips, test_shifts=args.test_shifts,
                  identity_init=args.identity_init, bias_rate=args.bias_rate,
                  progressive=args.progressive)


def identity_init(branch):
    """airbench's partial identity: in every trainable 3x3 conv the first filters, one per input
    channel, start as that channel copied through (PyTorch's dirac_ on w[:in_channels]), the rest
    keep their random start. A block's second conv (as many channels in as out) starts as the identity.
    Only the starting values change: the saved JSON's initializers stay Keras' own."""
    for layer in branch.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.trainable and layer.kernel_size == (3, 3):
            kernel = np.array(layer.kernel.numpy())
            n = min(kernel.shape[2], kernel.shape[3])
            kernel[:, :, :, :n] = 0
            kernel[1, 1, np.arange(n), np.arange(n)] = 1
            layer.kernel.assign(kernel)


def _with_bias_rate(optimizer, rate):
    """`optimizer`'s class with BatchNorm's biases (its `beta`s) stepped at `rate` times the rate.
    Keras gives one rate to every variable; airbench gives biases 64x (with SGD; with Adam, whose
    steps do not grow with the gradient, a multiple of the rate is a multiple of the step)."""
    class BiasRate(optimizer):
        def update_step(self, gradient, variable, learning_rate):
            if self._trainable_variables[self._get_variable_index(variable)].name == "beta":
                learning_rate = ops.multiply(learning_rate, rate)
            return super().update_step(gradient, variable, learning_rate)
    BiasRate.__name__ = f"{optimizer.__name__}BiasRate"
    return BiasRate


def identity_loss(labels, logits, smoothing=0.0):
    """Mean softmax cross-entropy of integer labels, with label smoothing: ours' identification
    softmax and the peer's classifier alike."""
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    if not smoothing:
        return ops.mean(ops.sparse_categorical_crossentropy(labels, logits, from_logits=True))
    targets = ops.one_hot(labels, ops.shape(logits)[-1])
    return ops.mean(keras.losses.categorical_crossentropy(targets, logits, from_logits=True,
                                                          label_smoothing=smoothing))
