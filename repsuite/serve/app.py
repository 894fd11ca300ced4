"""The Gradio page of ``repsuite serve``: one tab per task given (needs the ``serve`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from repsuite.errors import InputError
from repsuite.serve.services import FaceService, NLQService

__all__ = ["build_app"]

_HEADERS = ["rank", "start (s)", "end (s)", "score", "IoU with truth"]


def _page_error(fn: Any) -> Any:
    """Show bad input (and refused requests) as a message in the page instead of a server error."""

    def wrapped(*args: Any) -> Any:
        try:
            return fn(*args)
        except InputError as err:
            raise gr.Error(str(err), title="Input refused") from None

    wrapped.__name__ = fn.__name__
    return wrapped


def _nlq_tab(service: NLQService) -> None:
    cat = service.catalogue
    intro = "Pick a clip, type a question: the model ranks time windows that answer it."
    if len(cat) == 0:
        intro += f" *No dataset clips: {cat.reason}.*"
    if cat.skipped:
        intro += " Left out: " + ", ".join(f"{n} clips ({why})" for why, n in cat.skipped.items()) + "."
    gr.Markdown(intro)
    with gr.Row():
        with gr.Column():
            clip = gr.Dropdown(
                cat.labels, value=cat.labels[0] if cat.labels else None, label="clip", elem_id="nlq-clip"
            )
            first = [q.question for q in cat.get(cat.labels[0]).questions] if cat.labels else []
            known = gr.Dropdown(
                first, value=None, label="annotated questions of this clip", elem_id="nlq-known"
            )
            upload = gr.Video(
                label="or upload a video",
                sources=["upload"],
                visible=not service.upload_refused,
                elem_id="nlq-upload",
            )
            if service.upload_refused:
                gr.Markdown(f"Video upload is off for this model: {service.upload_refused}.")
            question = gr.Textbox(
                label="question", placeholder="where did I put the keys?", elem_id="nlq-question"
            )
            top_k = gr.Slider(1, 20, value=5, step=1, label="windows", elem_id="nlq-topk")
            ask = gr.Button("Ask", variant="primary", elem_id="nlq-ask")
        with gr.Column():
            note = gr.Markdown(elem_id="nlq-note")
            timeline = gr.HTML(elem_id="nlq-timeline")
            table = gr.Dataframe(headers=_HEADERS, interactive=False, elem_id="nlq-windows")
            player = gr.Video(label="best window", interactive=False, elem_id="nlq-player")

    def questions_of(label: str | None) -> Any:
        qs = [q.question for q in cat.get(label).questions] if label else []
        return gr.update(choices=qs, value=None)

    def answer(label: str | None, q: str, k: float, video: str | None) -> tuple:
        view = service.ask(label, q, int(k), video)
        return f"**{view.note}**", view.timeline, view.rows, str(view.clip) if view.clip else None

    clip.change(_page_error(questions_of), clip, known, api_name=False)
    known.change(lambda q: q or gr.update(), known, question, api_name=False)
    ask.click(
        _page_error(answer),
        [clip, question, top_k, upload],
        [note, timeline, table, player],
        api_name="nlq_ask",
    )


def _face_tab(service: FaceService, video: bool) -> None:
    gr.Markdown(
        "Drop a **source** photo (whose identity to use) and a **target** photo (whose face to replace). "
        "Results are synthetic media: the provenance record travels inside the downloaded PNG."
    )
    with gr.Row():
        with gr.Column():
            source = gr.File(
                label="source photo", file_types=["image"], type="filepath", elem_id="face-source"
            )
            target = gr.File(
                label="target photo", file_types=["image"], type="filepath", elem_id="face-target"
            )
            faces = gr.Textbox(
                value="largest",
                label="faces to swap: largest, all, or numbers such as 0, 2 (left to right)",
                elem_id="face-choice",
            )
            run = gr.Button("Swap", variant="primary", elem_id="face-swap")
            if video:
                clip = gr.File(
                    label="or a short target video",
                    file_types=["video"],
                    type="filepath",
                    elem_id="face-video",
                )
                run_video = gr.Button("Swap video", elem_id="face-swap-video")
            else:
                gr.Markdown("Video swapping needs a face detector (`repsuite serve --detector PATH`).")
        with gr.Column():
            result = gr.Image(
                label="result (synthetic)",
                type="filepath",
                interactive=False,
                height=256,
                elem_id="face-result",
            )
            label = gr.Markdown(elem_id="face-label")
            provenance = gr.JSON(label="provenance", elem_id="face-provenance")
            download = gr.File(
                label="download (PNG with its provenance)", interactive=False, elem_id="face-download"
            )
            if video:
                result_video = gr.Video(
                    label="result video (labelled)", interactive=False, elem_id="face-result-video"
                )

    def swap(src: str | None, tgt: str | None, choice: str) -> tuple:
        path, record = service.swap_image(src, tgt, choice)
        what, version = record.get("content", "face swap"), record.get("repsuite", "")
        text = f"**Synthetic image** — {what} by repsuite {version}"
        return str(_display_copy(path)), text, record, str(path)

    run.click(
        _page_error(swap),
        [source, target, faces],
        [result, label, provenance, download],
        api_name="face_swap",
    )
    if video:

        def swap_video(src: str | None, clip_path: str | None, choice: str) -> tuple:
            path, report = service.swap_video(src, clip_path, choice)
            return str(path), report

        run_video.click(
            _page_error(swap_video),
            [source, clip, faces],
            [result_video, provenance],
            api_name="face_swap_video",
        )


def _display_copy(path: Path, at_least: int = 256) -> Path:
    """A larger copy of a small result for the page (a 64 px swap is a speck); downloads get the original."""
    from PIL import Image

    with Image.open(path) as img:
        scale = -(-at_least // min(img.size))  # ceil
        if scale <= 1:
            return path
        view = path.with_name(f"{path.stem}-view.png")
        img.convert("RGB").resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST).save(
            view
        )
    return view


def build_app(
    nlq: NLQService | None = None,
    faces: FaceService | None = None,
    face_video: bool = False,
    max_queue: int = 64,
) -> gr.Blocks:
    """The page: an NLQ tab and / or a face-swap tab; requests are queued and run one at a time per task.

    Args:
        nlq: the NLQ service (its tab is left out when None).
        faces: the face-swap service (its tab is left out when None).
        face_video: offer video swapping (needs a real face detector).
        max_queue: requests waiting beyond this are refused with a "queue full" message.
    """
    if nlq is None and faces is None:
        raise ValueError("build_app: give at least one of nlq= or faces=")
    with gr.Blocks(title="repsuite") as app:
        gr.Markdown("# repsuite")
        if nlq is not None:
            with gr.Tab("Natural language queries", elem_id="tab-nlq"):
                _nlq_tab(nlq)
        if faces is not None:
            with gr.Tab("Face swap", elem_id="tab-faceswap"):
                _face_tab(faces, face_video)
    # one model call at a time per event: the networks are not re-entrant and the CPU is shared anyway
    return app.queue(max_size=max_queue, default_concurrency_limit=1)
