"""Reload saved_models/siamese.json + siamese.weights.h5 and predict CIFAR-100 fine labels.

    python Test_Cifar-100.py [--data-dir PATH] [--count 32] [--image FILE ...]   (see --help)
"""
from siamese.cli import Parser, positive_int


def parse_args(argv=None):
    p = Parser(prog="Test_Cifar-100.py", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="local CIFAR copy (as for Cifar-100.py; default: $CIFAR100_DIR, else download)")
    p.add_argument("--model-dir", default="saved_models", help="folder with the saved model (default: saved_models)")
    p.add_argument("--count", type=positive_int, default=32, help="first N test images to predict (default: 32)")
    p.add_argument("--shots", type=positive_int, default=10,
                   help="exemplars per class: the first N training images of each class (default: 10)")
    p.add_argument("--image", nargs="+", metavar="PATH", help="predict these image files instead (top-5 classes)")
    p.add_argument("--no-plots", action="store_true", help="do not write predictions.png")
    return p.parse_args(argv)


if __name__ == "__main__":
    from siamese import errors, predict
    errors.run(predict.main, parse_args())
