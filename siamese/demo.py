"""The page behind `python demo.py`: Gradio on top of the one scorer.

The exemplars are embedded once, when the page starts (or read from the gallery beside the
model, gallery.py); a request embeds only its own images.
Every upload is read by `data.read_image`, so a file the page cannot use becomes a message on
the page (and the server goes on serving), never an exception in the browser.
"""
import html
import os
import socket
from pathlib import Path

import numpy as np

from . import artifacts, data, gallery, predict
from .errors import UserError

TOP_K = 5
SHOWN_CLASSES, SHOWN_SHOTS = 3, 4   # exemplars drawn next to a classified image
NEIGHBOURS = 8                       # the most similar exemplars drawn for an upload
UPLOAD_HEIGHT = 240
SHOWN_SIZE = 96                      # 32x32 images (the model's size) drawn this big, pixels kept sharp
MAX_UPLOAD = "20mb"                  # larger uploads are refused by Gradio before they reach us
CSS = """
#p-same .percent { font-size: 4.5rem; font-weight: 700; line-height: 1.1; text-align: center; }
#p-same .verdict { font-size: 1.6rem; text-align: center; }
#p-same .detail { text-align: center; opacity: 0.75; }
#p-same .same { color: #15803d; }
#p-same .different { color: #b91c1c; }
#answer .answer { font-size: 1.6rem; font-weight: 600; }
#answer .none { color: #b91c1c; }
.upload img { width: 100%; height: 100%; object-fit: contain; }  /* a small upload drawn big */
#exemplars .grid-wrap { min-height: 0; height: auto; }            /* no empty rows below */
"""


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # a local page calls no one
    try:
        import gradio
    except ImportError:
        raise UserError("demo.py needs gradio, which is not installed; "
                        "run `pip install -r requirements-demo.txt`") from None
    return gradio


def summary(labels, names, where):
    """One line: which classes the page knows, and how many exemplars each."""
    ids, counts = np.unique(labels, return_counts=True)
    if counts.min() == counts.max():
        each = f"{counts[0]} exemplar{'s' if counts[0] > 1 else ''} each"
        listed = ", ".join(names[int(c)] for c in ids)
    else:
        each = f"{counts.min()} to {counts.max()} exemplars each"
        listed = ", ".join(f"{names[int(c)]} ({n})" for c, n in zip(ids, counts))
    return f"**{len(ids)} classes**, {each} ({html.escape(where)}): {html.escape(listed)}"


def _shown(image):
    """A small image (the model's size) drawn bigger, nearest-neighbour: what the network sees,
    pixel for pixel; one at SHOWN_SIZE or more as it is."""
    k = max(1, SHOWN_SIZE // image.shape[0])
    return np.repeat(np.repeat(image, k, 0), k, 1)


def _read_upload(upload, size, label="image"):
    """The uploaded file (Gradio's JSON for it) as uint8 RGB of the model's size x size, or a
    UserError worded for the page."""
    if not upload or not upload.get("path"):
        raise UserError(f"no {label} yet; upload or paste one first")
    name = upload.get("orig_name") or label
    if upload.get("size") == 0 or os.path.getsize(upload["path"]) == 0:
        raise UserError(f"{name} is empty; upload a PNG/JPEG/... image")
    try:
        return data.read_image(upload["path"], size=size)
    except UserError as e:   # the message must name the user's file, not Gradio's temporary copy
        message = str(e).replace(str(upload["path"]), name)
        raise UserError(message if name in message else f"{name}: {message}") from None


def p_same_html(p):
    same = p > 0.5    # the threshold training's verification accuracy uses
    kind = "same" if same else "different"
    return (f'<div class="percent {kind}">{100 * p:.0f}%</div>'
            f'<div class="verdict {kind}">{"Same class" if same else "Different classes"}</div>'
            f'<div class="detail">P(same class) = {p:.3f}</div>')


def answer_html(top, threshold):
    """The page's answer: the best class, or "none of these classes" below the threshold, with
    the class confidence first where the model has one (top: [(name, P(same), P(class) or None)]),
    and a table of both for the ranked classes."""
    name, score = top[0][:2]
    p_class = top[0][2] if len(top[0]) > 2 else None
    shown = score if p_class is None else p_class
    if predict.answer(top, threshold) == predict.UNKNOWN:
        line = (f'<div class="answer none">none of these classes (best: {html.escape(name)} '
                f'{100 * shown:.0f}%)</div><div class="detail">P(same) {score:.3f}, below the rejection threshold, P(same) {threshold:.3f}</div>')
    else:
        line = f'<div class="answer">{html.escape(name)} ({100 * shown:.0f}%)</div>'
    if p_class is None:
        return line
    rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{100 * c:.0f}%</td><td>{s:.3f}</td></tr>" for n, s, c in top)
    return (line + '<table class="ranked"><tr><th>class</th><th>P(class | image)</th>'
            f'<th>P(same) with its prototype</th></tr>{rows}</table>')


def build(gr, scorer, classifier, images, labels, names, line, threshold=None):
    """The page: two tabs on one scorer whose exemplar embeddings already sit in `classifier`
    (`images` in the same order). With a rejection threshold, a control turns "none of these
    classes" on and off."""
    by_name = {names[int(c)]: images[labels == c][:SHOWN_SHOTS] for c in np.unique(labels)}
    k = min(TOP_K, len(by_name))
    calibrated = classifier.temperature is not None

    def classify(upload, reject=False):
        try:
            image = _read_upload(upload, scorer.size)
        except UserError as e:
            gr.Warning(str(e))
            return None, None, None, "", None
        embedding = scorer.embed(image[None])
        ranked = classifier.top(embedding, k=k)[0]
        shown = {name: (c if calibrated else s) for name, s, c in ranked}
        exemplars = [(_shown(ex), name) for name, _, _ in ranked[:SHOWN_CLASSES] for ex in by_name[name]]
        found, scores = scorer.nearest(embedding, classifier.embeddings, NEIGHBOURS)
        near = [(_shown(images[j]), f"{names[int(labels[j])]} {p:.3f}") for j, p in zip(found[0], scores[0])]
        return shown, _shown(image), exemplars, answer_html(ranked, threshold if reject else None), near

    def reclassify(upload, reject):
        """The control changed: answer again, silently when there is no image yet."""
        return classify(upload, reject) if upload and upload.get("path") else (gr.skip(),) * 5

    def compare(upload_a, upload_b):
        try:
            a, b = _read_upload(upload_a, scorer.size, "image A"), _read_upload(upload_b, scorer.size, "image B")
        except UserError as e:
            gr.Warning(str(e))
            return ""
        return p_same_html(predict.p_same(scorer, a, b))

    with gr.Blocks(title="Siamese network demo") as page:
        gr.Markdown("## Siamese network: see what it sees")
        gr.Markdown(line, elem_id="classes")
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    query = gr.Image(label="Image", sources=["upload", "clipboard"], type="filepath",
                                     height=UPLOAD_HEIGHT, elem_id="query", elem_classes="upload")
                    classify_button = gr.Button("Classify", variant="primary", elem_id="classify")
                    reject = gr.Checkbox(value=threshold is not None, visible=threshold is not None,
                                         elem_id="reject", label=f"Answer \"none of these classes\" when the "
                                         f"best score is below {threshold or 0:.3f}")
                with gr.Column():
                    answer = gr.HTML(elem_id="answer")
                    top = gr.Label(label=f"Top {k}: P(class | image), calibrated on held-out images"
                                   if calibrated else f"Top {k}: P(same) with each class's exemplars (their mean "
                                   "embedding)", num_top_classes=k, elem_id="top")
                    seen = gr.Image(label=f"What the network sees ({scorer.size}x{scorer.size})", interactive=False,
                                    height=SHOWN_SIZE + 60, elem_id="seen")
            compared = gr.Gallery(label="Exemplars of the best classes: what it compared with",
                                 columns=2 * SHOWN_SHOTS, elem_id="exemplars")
            nearest = gr.Gallery(label=f"The {NEIGHBOURS} most similar exemplars, with P(same)",
                                 columns=NEIGHBOURS, elem_id="neighbours")
        with gr.Tab("Same or different?"):
            with gr.Row():
                image_a = gr.Image(label="Image A", sources=["upload", "clipboard"], type="filepath",
                                   height=UPLOAD_HEIGHT, elem_id="image-a", elem_classes="upload")
                image_b = gr.Image(label="Image B", sources=["upload", "clipboard"], type="filepath",
                                   height=UPLOAD_HEIGHT, elem_id="image-b", elem_classes="upload")
            compare_button = gr.Button("Compare", variant="primary", elem_id="compare")
            verdict = gr.HTML(elem_id="p-same")
        # preprocess=False: the handlers get Gradio's JSON for the uploaded file (already checked
        # to lie in Gradio's upload folder) and read it themselves, so that a file that is not an
        # image reaches them and gets a message, not Gradio's generic "Error".
        # One concurrency slot for both: requests take turns on the one model.
        shown = [top, seen, compared, answer, nearest]
        classify_button.click(classify, [query, reject], shown, preprocess=False,
                              concurrency_id="model", concurrency_limit=1)
        reject.change(reclassify, [query, reject], shown, preprocess=False,
                      concurrency_id="model", concurrency_limit=1)
        compare_button.click(compare, [image_a, image_b], verdict, preprocess=False,
                             concurrency_id="model", concurrency_limit=1)
    return page


def _check_port(host, port):
    """Fail in a second, not after loading the model and data, when the port is taken."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise UserError(f"cannot serve on {host}:{port} ({e.strerror or e}); "
                        "pass another --port (or --host)") from None


def page_threshold(model_dir, learned=False):
    """The model's calibrated threshold (`learned`: for classes scored by their learned
    directions), or None for a model saved before there were any (the page then always names a
    class, as it did)."""
    if not (Path(model_dir) / artifacts.THRESHOLD).exists():
        return None
    return artifacts.load_threshold(model_dir, learned)


def main(args):
    gr = _gradio()
    _check_port(args.host, args.port)
    model = artifacts.load_model(args.model_dir)
    scorer = artifacts.load_scorer(args.model_dir, model)
    loaded = gallery.load_exemplars(args, size=scorer.size)   # the page draws exemplars: their images are read anyway
    images, labels, names, where = loaded[:4]
    learned = predict.learned_directions(args, scorer)
    threshold = args.reject or page_threshold(args.model_dir, learned is not None)
    exemplars, _ = gallery.exemplars(args, scorer, args.model_dir, loaded=loaded)
    classifier = predict.ExemplarClassifier.of(scorer, exemplars, artifacts.load_temperature(args.model_dir),
                                               learned)
    page = build(gr, scorer, classifier, images, labels, names, summary(labels, names, where), threshold)
    try:
        page.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD,
                    ssr_mode=False, css=CSS)
    except OSError:   # taken since _check_port: Gradio says "Cannot find empty port in range"
        raise UserError(f"cannot serve on {args.host}:{args.port} (in use); pass another --port (or --host)") from None
