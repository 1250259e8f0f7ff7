"""Flag parsing shared by the two scripts: one-line errors, exit status 2."""
import argparse
import os

# Before TensorFlow is imported anywhere: keep its C++ start-up chatter out of the output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class Saved:
    """The value of a flag given without one that means "what training saved" (--reject):
    not a string, so argparse does not pass it through the flag's type."""

    def __repr__(self):
        return "saved"


SAVED = Saved()


class Parser(argparse.ArgumentParser):
    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, **kwargs)   # a typo is an error, not a guess

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _number(text, parse, ok, what):
    """argparse type: `parse(text)` if `ok` of it holds (NaN never does), else one-line error."""
    try:
        value = parse(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def shots(text):
    """--shots: a positive count or 'all' (None)."""
    return None if text == "all" else _number(text, int, lambda v: v >= 1, "a positive integer or 'all'")


def image_size(text):
    """--image-size: whole pixels a side, within data.SIZES."""
    from .data import SIZES
    low, high = SIZES
    return _number(text, int, lambda v: low <= v <= high, f"a whole number of pixels from {low} to {high}")


def positive_int(text):
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def positive_float(text):
    return _number(text, float, lambda v: 0 < v < float("inf"), "a positive number")


def fraction(text):
    return _number(text, float, lambda v: 0 <= v <= 1, "a number from 0 to 1")


def proper_fraction(text):
    return _number(text, float, lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)")


def non_negative_float(text):
    return _number(text, float, lambda v: 0 <= v < float("inf"), "a number >= 0")
