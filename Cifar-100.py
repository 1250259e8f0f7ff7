"""Train the Siamese network on same/different CIFAR-100 pairs and save it to saved_models/.

    python Cifar-100.py [--data-dir PATH] [--epochs N] [--max-minutes M] ...   (see --help)
"""
from siamese.cli import Parser, non_negative_float, fraction, positive_float, positive_int, proper_fraction


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
                   help="training epochs (default: 30; no cap when --max-minutes is given alone)")
    p.add_argument("--batch-size", type=positive_int, default=128,
                   help="images per batch; all pairs among them are scored (default: 128)")
    p.add_argument("--per-class", type=positive_int, default=8,
                   help="images per class in a batch (default: 8)")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate, cosine decay (default: 2e-3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--max-minutes", type=positive_float,
                   help="train for this many minutes (and at most --epochs, if given), then evaluate and save")
    p.add_argument("--shots", type=positive_int, default=10,
                   help="training exemplars per class for the test classification (default: 10)")
    p.add_argument("--holdout", help="keep classes unseen for few-shot tests: 'fc100' or a number N")
    p.add_argument("--hard-negatives", type=fraction, default=0.0,
                   help="fraction of a batch's classes drawn in pairs from one superclass (CIFAR-100; default: 0)")
    p.add_argument("--id-weight", type=non_negative_float, default=0.0,
                   help="weight of a training-only softmax over the training classes beside the pair loss "
                   "(default: 0, the pair loss alone; 1 with --head tied)")
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="no random horizontal flips (for data where a mirror image is another class, e.g. characters)")
    p.add_argument("--rotate-classes", action="store_true",
                   help="also train on every class turned by 90/180/270 degrees, each a new class (characters)")
    p.add_argument("--distort", type=fraction, default=0.0,
                   help="strength 0-1 of random affine distortions (rotation, scale, shear) (default: 0)")
    p.add_argument("--head", choices=["free", "tied"], default="free",
                   help="free: the seed's Dense weights on |a - b|; tied: one weight <= 0 for all of them, "
                   "a distance that transfers to new classes of characters (default: free)")
    p.add_argument("--strategy", choices=["default", "mirrored", "multiworker"], default="default",
                   help="tf.distribute strategy (default: one device)")
    p.add_argument("--devices", help="with --strategy mirrored: comma-separated devices (default: all GPUs)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--tensorboard", metavar="DIR",
                   help="write TensorBoard logs (loss, accuracy, learning rate per epoch) to DIR")
    p.add_argument("--no-plots", action="store_true", help="do not write training_curves.png / roc.png")
    return p.parse_args(argv)


if __name__ == "__main__":
    from siamese import errors, train
    errors.run(train.main, parse_args())
