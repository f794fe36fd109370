"""The Gradio layout of ``carbench app``: a tab to try a photo, a tab to browse each experiment's test mistakes.

Everything it shows comes from a :class:`~carbench.app.showroom.Showroom`; this module only lays it out. A photo or a
box the showroom refuses is one ``error: ...`` line in the page (the status line), never a traceback. The page loads
nothing from outside the machine: Gradio's own theme fonts ship inside the package, its analytics and version check
are off (``GRADIO_ANALYTICS_ENABLED=False`` before it is imported) and :mod:`carbench.app.command` makes no share
link.
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..core.errors import UserError
from .showroom import Answer, Mistakes, Showroom

TITLE = "carbench: try the models"
#: The top-5 cards side by side, wrapping on a narrow window.
CSS = """
.top5 {display: flex; flex-wrap: wrap; gap: 12px;}
.top5 .card {flex: 1 1 220px; border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px;}
.top5 h4 {margin: 0 0 4px 0;}
.top5 ol {margin: 0; padding-left: 1.4em;}
.top5 .p {font-variant-numeric: tabular-nums; margin-right: 0.4em;}
.top5 .note, .top5 .warning {font-size: 0.85em; opacity: 0.8;}
"""


def refusal(exc: UserError, photo: Optional[str]) -> str:
    """The one status line for a refused upload: the photo by the name it was uploaded under (not the server's
    temporary path), the box as the page calls it (the shared messages say ``--box``, the command's option)."""
    text = str(exc)
    if photo:
        text = text.replace(str(photo), Path(photo).name)
    return "error: " + text.replace("--box", "box")


def top5_html(answers: list[Answer]) -> str:
    """Each experiment's top-5 as a card, side by side; each line carries its experiment, rank, class and
    probability as data attributes too."""
    cards = []
    for a in answers:
        items = []
        for rank, row in enumerate(a.ranked, start=1):
            note = f' <span class="note">({html.escape(row.note)})</span>' if row.note else ""
            items.append(f'<li data-experiment="{html.escape(a.experiment)}" data-rank="{rank}" '
                         f'data-class="{html.escape(row.name)}" data-probability="{row.probability:.4f}">'
                         f'<span class="p">{row.probability:.4f}</span>{html.escape(row.name)}{note}</li>')
        warning = f'<div class="warning">{html.escape(a.warning)}</div>' if a.warning else ""
        kind = "retrieval (k-NN vote)" if a.kind == "knn" else "classifier (softmax)"
        cards.append(f'<div class="card" data-experiment="{html.escape(a.experiment)}"><h4>'
                     f'{html.escape(a.experiment)}</h4><div class="note">{kind}</div><ol>{"".join(items)}</ol>'
                     f'{warning}</div>')
    return f'<div class="top5">{"".join(cards)}</div>'


def neighbour_items(answer: Answer) -> list[tuple[np.ndarray, str]]:
    """A retrieval answer's nearest gallery crops as gallery items ``(crop, "class (d=...)")``."""
    return [(crop, f"{name} (d={d:.3f})") for crop, name, d in answer.neighbours]


def mistake_items(page: Mistakes) -> list[tuple[np.ndarray, str]]:
    """Three tiles per mistake, one row each in a three-column gallery: the test crop, then train crops of the
    true and of the predicted class."""
    tiles = []
    for m in page.items:
        tiles.append((m.crop, f"{m.image}: true {m.true}, predicted {m.predicted}"))
        tiles.append((m.true_examples[0] if m.true_examples else np.full_like(m.crop, 255), f"true: {m.true}"))
        tiles.append((m.predicted_examples[0] if m.predicted_examples else np.full_like(m.crop, 255),
                      f"predicted: {m.predicted}"))
    return tiles


def mistakes_line(page: Mistakes) -> str:
    if not page.items:
        return f"{page.experiment}: no test mistakes ({page.total} test photos)"
    last = page.first + len(page.items) - 1
    return (f"{page.experiment}: {page.wrong} of {page.total} test photos wrong; mistakes {page.first}-{last} "
            "(each row: the test crop, a train crop of its true class, one of the predicted class)")


def predict(showroom: Showroom, path: Optional[str], box: Optional[str]) -> list[Any]:
    """The try tab's outputs for an uploaded photo: status line, the crop the models see, the top-5 cards, then
    each retrieval experiment's nearest gallery crops; a refusal leaves all but the status line empty."""
    empty = [None, "", *([[]] * len(showroom.retrieval))]
    if not path:
        return ["error: choose a photo first", *empty]
    try:
        seen, answers = showroom.predict_all(path, box)
    except UserError as exc:
        return [refusal(exc, path), *empty]
    by_name = {a.experiment: a for a in answers}
    return [f"{Path(path).name}: top-5 of {len(answers)} experiments", seen, top5_html(answers),
            *(neighbour_items(by_name[n]) for n in showroom.retrieval)]


def browse(showroom: Showroom, name: str, page_number: Optional[float]) -> list[Any]:
    """The mistakes tab's outputs: its line and the gallery tiles (an error line and none when refused)."""
    try:
        found = showroom.mistakes(name, int(page_number or 1))
    except UserError as exc:
        return ["error: " + str(exc), []]
    return [mistakes_line(found), mistake_items(found)]


def build(showroom: Showroom) -> Any:
    """The page as a ``gradio.Blocks`` (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # before Gradio is imported: no calls home
    import gradio as gr

    names, retrieval = showroom.names, showroom.retrieval
    loaded = f"{len(names)} experiments from `{showroom.models_root}`"
    skipped = "".join(f"\n- not loaded: `{n}`: {html.escape(why)}" for n, why in showroom.skipped.items())
    with gr.Blocks(title=TITLE, analytics_enabled=False) as page:
        gr.Markdown(f"# {TITLE}\n{loaded}; crops made as in `{showroom.crops_dir}`.{skipped}")
        with gr.Tab("Try a photo"):
            with gr.Row():
                photo = gr.File(label="photo (JPEG, PNG, WebP, ...)", type="filepath", elem_id="photo")
                with gr.Column():
                    box = gr.Textbox(label="car box x1,y1,x2,y2 (optional; 1-based pixels, inclusive; empty: the "
                                     "whole photo)", placeholder="e.g. 35,60,410,290", elem_id="box")
                    go = gr.Button("Predict", variant="primary", elem_id="predict")
                crop = gr.Image(label="the crop the models see", interactive=False, elem_id="crop", height=224)
            status = gr.Markdown(elem_id="status")
            top5 = gr.HTML(elem_id="top5")
            galleries = [gr.Gallery(label=f"{n}: nearest gallery crops", columns=8, height=240,
                                    elem_id=f"nearest-{n}") for n in retrieval]
        with gr.Tab("Test mistakes"):
            with gr.Row():
                experiment = gr.Dropdown(names, value=names[0], label="experiment", elem_id="experiment")
                number = gr.Number(1, label="page", precision=0, minimum=1, elem_id="page")
                show = gr.Button("Show", elem_id="show")
            summary = gr.Markdown(elem_id="mistakes-line")
            grid = gr.Gallery(label="test mistakes", columns=3, height="auto", elem_id="mistakes")

        go.click(lambda path, text: predict(showroom, path, text), [photo, box], [status, crop, top5, *galleries],
                 api_name="predict")
        for event in (show.click, experiment.change, page.load):
            event(lambda name, n: browse(showroom, name, n), [experiment, number], [summary, grid])
    return page
