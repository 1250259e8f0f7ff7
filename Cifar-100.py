"""Train the Siamese network on same/different CIFAR-100 pairs and save it to saved_models/.

    python Cifar-100.py [--data-dir PATH] [--epochs N] [--max-minutes M] ...   (see --help)
"""
import argparse

from siamese.cli import (Parser, fraction, image_size, non_negative_float, positive_float, positive_int,
                         proper_fraction, shots)
from siamese.data import IMAGE_SIZE   # numpy only: a bad flag is reported before TensorFlow loads

# Named sets of flags; a flag given on the command line wins over its recipe. Photos: mirror
# images are the same class; embeddings on a sphere with a cosine identification softmax, 64
# classes of 2 images in a batch. Characters (Omniglot): a mirrored or turned character is another
# character, so turns become new classes to learn similarity from, handwriting varies by small
# affine distortions, and the free embedding it was measured with stays (the sphere's one run
# scored a point lower). Numbers: docs/benchmarks.md, "100 classes of photos".
RECIPES = {
    "photos": dict(width=1.0,           # airbench94's; 10 epochs of it (the default) beat 20 of width 0.5
                   embedding="sphere", flip=True, rotate_classes=False, distort=0.0, lr=2e-3, per_class=2,
                   test_shifts=True,    # +1.2 top-1, +0.7 new-class 1-shot: docs/benchmarks.md, "The recipe"
                   identity_init=True,  # +3.1 top-1, +1.5 new-class 1-shot (the peer +3.5 / +0.9): the same table
                   metric_stage=0.0),   # no share has won on held-out classes yet: docs/benchmarks.md, "Metric stage"
    "characters": dict(width=0.5,   # the width its recipe was measured with
                       embedding="free", flip=False, rotate_classes=True, distort=1.0, lr=4e-3, per_class=8,
                       test_shifts=False,   # not measured on characters
                       identity_init=False,  # not measured on characters
                       metric_stage=0.0),
}


def parse_args(argv=None):
    p = Parser(prog="Cifar-100.py", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="local CIFAR copy (cifar-100-python folder or its .tar.gz), a "
                   "train/<class>/ + test/<class>/ image tree, or a folder of class folders <class>/<images> "
                   "of any size, or a .zip/.tar/.tar.gz of one, read in place (default: $CIFAR100_DIR, "
                   "else download)")
    p.add_argument("--test-fraction", type=proper_fraction, default=0.2,
                   help="a folder of class folders: share of each class kept for testing, chosen by "
                   "--seed (default: 0.2)")
    p.add_argument("--out", default="saved_models", help="output folder (default: saved_models)")
    p.add_argument("--epochs", type=positive_int,
                   help="training epochs (default: the recipe's, 10 for photos, 20 for characters; no cap when "
                   "--max-minutes is given alone)")
    p.add_argument("--batch-size", type=positive_int, default=128,
                   help="images per batch; all pairs among them are scored (default: 128)")
    p.add_argument("--per-class", type=positive_int,
                   help="images per class in a batch (default: the recipe's, 2 for photos: 64 classes in a batch "
                   "of 128; 8 for characters)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="photos",
                   help="photos: random mirror images; characters: no mirrors, every class also turned by "
                   "90/180/270 degrees as new classes, affine distortions, --embedding free, --lr 4e-3, --per-class 8 "
                   "(default: photos)")
    p.add_argument("--embedding", choices=["sphere", "free"],
                   help="sphere: embeddings of one length and a cosine identification softmax; free: any length, "
                   "a Dense one (default: the recipe's, sphere for photos, free for characters)")
    p.add_argument("--image-size", type=image_size, default=IMAGE_SIZE, metavar="S",
                   help="images are read as S x S pixels (area-averaged), the model takes S x S and every "
                   "prediction reads S from it; more detail for photos larger than CIFAR's, at about (S/32)^2 the "
                   "time per image (default: 32)")
    p.add_argument("--width", type=positive_float,
                   help="scales the branch's channels: 1 is airbench94's 64/256/256, more for a GPU or a bigger "
                   "machine, 0.5 for runs of a few minutes on a laptop (default: the recipe's, 1 for photos, 0.5 for "
                   "characters)")
    p.add_argument("--depth", type=positive_int, default=2, metavar="D",
                   help="3x3 convolutions per block of the branch (default: 2, airbench94's)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (default: the recipe's, 2e-3 for photos with adam; 0.19 with sgd)")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam",
                   help="adam: warm-up + cosine rate; sgd: Nesterov momentum with weight decay and airbench's linear "
                   "ramp up and down (default: adam)")
    p.add_argument("--label-smoothing", type=fraction, default=0.0,
                   help="label smoothing of the identification softmax (default: 0)")
    p.add_argument("--weight-decay", type=non_negative_float, default=0.0, metavar="W",
                   help="decoupled weight decay (AdamW's): every step each weight shrinks by W times the rate "
                   "(default: 0: none with adam, airbench's with sgd)")
    p.add_argument("--ema", type=fraction, default=0.0,
                   help="momentum of a moving average of the weights, which becomes the model at the end; 0 is off "
                   "(default: 0)")
    p.add_argument("--xla", action=argparse.BooleanOptionalAction, default=False,
                   help="compile the train step with XLA, jit_compile (default: off: slower than TensorFlow's own "
                   "CPU kernels on a 2-core machine; try it on a GPU)")
    p.add_argument("--alternate-flips", action=argparse.BooleanOptionalAction, default=False,
                   help="mirror each training image on every other epoch instead of at random, airbench's "
                   "(default: off)")
    p.add_argument("--test-shifts", action=argparse.BooleanOptionalAction, default=None,
                   help="score every image also moved by a pixel each way, with flips airbench's 6 test-time views "
                   "(default: the recipe's, on for photos)")
    p.add_argument("--identity-init", action=argparse.BooleanOptionalAction, default=None,
                   help="start each 3x3 conv's first filters as the identity on its input channels, airbench's "
                   "(default: the recipe's, on for photos)")
    p.add_argument("--bias-rate", type=positive_float, default=1.0, metavar="R",
                   help="BatchNorm biases learn at R times the rate, airbench's 64 with SGD (default: 1)")
    p.add_argument("--progressive", type=fraction, default=0.0, metavar="FRACTION",
                   help="train the first FRACTION of the run on images 3/4 the side (24x24 at 32), as the CIFAR-100 "
                   "speedrun record trains its first quarter (default: 0, off)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--max-minutes", type=positive_float,
                   help="train for this many minutes (and at most --epochs, if given), then evaluate and save")
    p.add_argument("--shots", type=shots, default=None,
                   help="training exemplars per class for the test classification, or 'all' (default: all)")
    p.add_argument("--holdout", help="keep classes unseen for few-shot tests: 'fc100' or a number N")
    p.add_argument("--hard-negatives", type=fraction, default=0.0,
                   help="fraction of a batch's classes drawn in pairs from one superclass (CIFAR-100; default: 0)")
    p.add_argument("--id-weight", type=non_negative_float, default=1.0,
                   help="weight of a training-only cosine softmax over the training classes beside the pair "
                   "loss (default: 1; 0 trains the pair loss alone)")
    p.add_argument("--no-flip", dest="flip", action="store_const", const=False,
                   help="no random horizontal flips (for data where a mirror image is another class, e.g. characters)")
    p.add_argument("--rotate-classes", action="store_const", const=True,
                   help="also train on every class turned by 90/180/270 degrees, each a new class (characters)")
    p.add_argument("--distort", type=fraction,
                   help="strength 0-1 of random affine distortions (rotation, scale, shear) (default: the recipe's)")
    p.add_argument("--head", choices=["free", "tied"], default="tied",
                   help="tied: one weight <= 0 for every |a_i - b_i|, P(same) falls with the L1 distance, "
                   "whatever the classes; free: the seed's Dense weights on |a - b| (default: tied)")
    p.add_argument("--metric-stage", type=fraction, metavar="FRACTION",
                   help="share of the run (steps or --max-minutes) ending it with episodes on the batch's classes, "
                   "queries scored against class prototypes by the Siamese head, beside the pair loss and the "
                   "identification softmax; 0: none (default: the recipe's, 0 for both: it has not yet helped held-out classes)")
    p.add_argument("--stage-lr", type=positive_float, default=1.0,
                   help="the metric stage's learning rate as a multiple of the schedule's (default: 1)")
    p.add_argument("--stage-score", choices=["head", "cosine"], default="head",
                   help="how the metric stage scores a query against the prototypes: the Siamese head's logit of "
                   "P(same), or Meta-Baseline's scaled cosine (default: head)")
    p.add_argument("--pair-loss", choices=["always", "stage"], default="always",
                   help="stage: the pair loss only in the metric stage, the identification softmax alone before it "
                   "(default: always)")
    p.add_argument("--strategy", choices=["default", "mirrored", "multiworker"], default="default",
                   help="tf.distribute strategy (default: one device)")
    p.add_argument("--devices", help="with --strategy mirrored: comma-separated devices (default: all GPUs)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--tensorboard", metavar="DIR",
                   help="write TensorBoard logs (loss, accuracy, learning rate per epoch) to DIR")
    p.add_argument("--no-plots", action="store_true",
                   help="do not write training_curves.png, roc.png, reliability.png, embedding_map.png")
    args = p.parse_args(argv)
    if args.lr is None and args.optimizer == "sgd":
        from siamese.recipe import SGD_LR   # imports Keras: only once the flags are known good
        args.lr = SGD_LR   # the recipes' rates are Adam's
    for flag, value in RECIPES[args.recipe].items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    if args.pair_loss == "stage" and not args.metric_stage:
        p.error("--pair-loss stage trains the pair head in the metric stage only: give --metric-stage FRACTION too")
    return args


if __name__ == "__main__":
    args = parse_args()   # first: a bad flag is one line at once, before TensorFlow's seconds of start-up
    from siamese import errors, train
    errors.run(train.main, args)
