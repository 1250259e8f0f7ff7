"""A local web page on the saved model: classify an image, ask whether two images are one class.

    python demo.py [--model-dir saved_models] [--data-dir PATH | --exemplars DIR] [--port 7860]
Needs `pip install -r requirements-demo.txt` (gradio); training and prediction do not.
"""
from siamese.cli import Parser, positive_int, proper_fraction


def parse_args(argv=None):
    p = Parser(prog="demo.py", description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default="saved_models", help="folder with the saved model (default: saved_models)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data-dir", help="classes and exemplars from this training data, as for "
                        "Test_Cifar-100.py (default: $CIFAR100_DIR, else download)")
    source.add_argument("--exemplars", metavar="DIR",
                        help="classes from a folder of class folders (or a .zip/.tar/.tar.gz of one), "
                        "every image in one an exemplar")
    p.add_argument("--shots", type=positive_int,
                   help="exemplars per class: the first N training images of each class "
                        "(default: every training image; with --exemplars: every image)")
    p.add_argument("--reject", type=proper_fraction, metavar="P",
                   help="answer \"none of these classes\" below P(same) P (0 < P < 1; default: the threshold "
                   "training saved beside the model, if any); the page has a control to turn it off")
    p.add_argument("--port", type=positive_int, default=7860, help="port to serve on (default: 7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it)")
    return p.parse_args(argv)


if __name__ == "__main__":
    from siamese import demo, errors
    errors.run(demo.main, parse_args())
