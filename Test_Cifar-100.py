"""Reload saved_models/siamese.json + siamese.weights.h5 and classify images against exemplars.

    python Test_Cifar-100.py [--data-dir PATH] [--count 32] [--image PATH ...]     (training classes)
    python Test_Cifar-100.py --exemplars DIR (--image PATH ... | --queries DIR) [--json]   (your classes)
    python Test_Cifar-100.py --exemplars DIR --episodes N [--ways W] [--shots K]   (few-shot accuracy)
    python Test_Cifar-100.py --exemplars DIR --episodes N --open                    (open-set: + unknown classes)
    add --reject [P] to answer `unknown` below the saved (or given) P(same) threshold
    python Test_Cifar-100.py --pair A B                                            (P(same class))
    python Test_Cifar-100.py --embed PATH ... [--out-file X.npy]                   (embeddings out)
    python Test_Cifar-100.py --export DIR                                           (a TensorFlow SavedModel)
"""
from siamese.cli import SAVED, Parser, positive_int, proper_fraction


def parse_args(argv=None):
    p = Parser(prog="Test_Cifar-100.py", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="local CIFAR copy (as for Cifar-100.py; default: $CIFAR100_DIR, else "
                   "download): exemplars and test images when there is no --exemplars")
    p.add_argument("--model-dir", default="saved_models", help="folder with the saved model (default: saved_models)")
    p.add_argument("--exemplars", metavar="DIR",
                   help="class folders DIR/<class>/<images> (any names), or a .zip/.tar/.tar.gz of them: "
                   "every image is an exemplar of its class")
    p.add_argument("--shots", type=positive_int,
                   help="exemplars per class: the first N files of each --exemplars folder (default: all), or "
                   "the first N training images of --data-dir (default: all); with --episodes, support "
                   "images per class (default: 1)")
    p.add_argument("--prototypes", choices=["learned", "exemplars"], default="learned",
                   help="learned: the classes training learned are scored by the directions it learned for "
                   "them (saved beside the model), when every training image of --data-dir would be an "
                   "exemplar; exemplars: every class by the mean of its exemplars (--exemplars and --shots "
                   "always are) (default: learned)")
    query = p.add_mutually_exclusive_group()
    query.add_argument("--image", nargs="+", metavar="PATH",
                       help="image files or folders of images to classify (top-5 classes each)")
    query.add_argument("--queries", metavar="DIR",
                       help="class folders DIR/<class>/<images>, or a .zip/.tar/.tar.gz of them: classify "
                       "every image, print accuracy (a class without exemplars counts as wrong)")
    query.add_argument("--pair", nargs=2, metavar=("A", "B"), help="print P(same class) of two image files")
    query.add_argument("--episodes", type=positive_int, metavar="N",
                       help="N random few-shot episodes over the --exemplars classes: mean accuracy ± 95%% CI")
    query.add_argument("--embed", nargs="+", metavar="PATH",
                       help="image files, folders or .zip/.tar/.tar.gz archives of images (at any depth): print "
                       "one JSON line per image with its embedding, or write them to --out-file")
    query.add_argument("--export", metavar="DIR",
                       help="write a TensorFlow SavedModel to DIR (new or empty) with two endpoints: "
                       "embed(images) -> embeddings and p_same(left, right) -> P(same class)")
    p.add_argument("--out-file", metavar="X.npy", help="with --embed: write the embeddings, one row per image, "
                   "to this .npy file and print the files in row order")
    p.add_argument("--neighbours", type=positive_int, metavar="K",
                   help="with --image/--queries: also list the K exemplar files with the highest P(same)")
    p.add_argument("--ways", type=positive_int, default=5, help="classes per episode (default: 5)")
    p.add_argument("--open", action="store_true",
                   help="with --episodes: open-set episodes, W known classes and W unknown ones (queries "
                   "only): closed accuracy on the known queries ± 95%% CI and the AUROC of known vs unknown")
    p.add_argument("--reject", nargs="?", const=SAVED, type=proper_fraction, metavar="P",
                   help="answer `unknown` when the best class score is below the threshold training "
                   "calibrated (saved beside the model), or below P (0 < P < 1) if given; with --open, "
                   "the shares of known queries accepted and unknown rejected by it")
    p.add_argument("--seed", type=int, default=0, help="random seed of the episodes (default: 0)")
    p.add_argument("--count", type=positive_int, default=32,
                   help="without --image/--queries: the first N test images of --data-dir (default: 32)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per query (or per --pair / --episodes run) and nothing else")
    p.add_argument("--no-plots", action="store_true",
                   help="do not write predictions.png, confusion.png, queries_map.png")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()   # first: a bad flag is one line at once, before TensorFlow's seconds of start-up
    from siamese import errors, predict
    errors.run(predict.main, args)
