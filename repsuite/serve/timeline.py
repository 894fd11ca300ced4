"""Drawing NLQ answers: ranked windows on a timeline next to the ground truth (SVG, no plotting library)."""

from __future__ import annotations

from html import escape

__all__ = ["timeline_svg", "window_iou"]

_WIDTH, _ROW, _LEFT = 560, 20, 44


def window_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Temporal IoU of two windows (start, end) in seconds."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else float(a == b)


def timeline_svg(
    duration: float,
    windows: list[tuple[float, float, float]],
    ground_truth: tuple[float, float] | None = None,
) -> str:
    """An SVG timeline: one row per ranked window ``(start, end, score)``, the ground truth on top.

    Each bar carries ``data-start`` / ``data-end`` (seconds) so a browser test can read what is drawn.
    """
    duration = max(duration, 1e-6)
    rows = ([("truth", *ground_truth, None)] if ground_truth else []) + [
        (f"#{i + 1}", s, e, score) for i, (s, e, score) in enumerate(windows)
    ]
    height = _ROW * (len(rows) + 1) + 8
    span = _WIDTH - _LEFT - 10

    def x(t: float) -> float:
        return _LEFT + span * min(max(t, 0.0), duration) / duration

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {height}" width="100%" '
        f'role="img" aria-label="answer timeline" class="repsuite-timeline">',
        f'<line x1="{_LEFT}" y1="{height - 16}" x2="{_LEFT + span}" y2="{height - 16}" stroke="#888"/>',
    ]
    for k in range(6):  # ticks at sixths of the clip
        t = duration * k / 5
        parts.append(
            f'<text x="{x(t):.1f}" y="{height - 2}" font-size="11" text-anchor="middle" fill="#666">'
            f"{t:.0f} s</text>"
        )
    for i, (name, start, end, score) in enumerate(rows):
        y = 4 + i * _ROW
        colour = "#2e7d32" if score is None else "#1565c0"
        opacity = 1.0 if score is None else max(0.35, 1.0 - 0.15 * (i - (1 if ground_truth else 0)))
        title = f"{name}: {start:.1f}-{end:.1f} s" + ("" if score is None else f", score {score:.3f}")
        parts += [
            f'<text x="4" y="{y + 14}" font-size="12" fill="#333">{escape(name)}</text>',
            f'<rect x="{x(start):.1f}" y="{y}" width="{max(x(end) - x(start), 2):.1f}" height="{_ROW - 6}" '
            f'fill="{colour}" fill-opacity="{opacity:.2f}" data-start="{start:.2f}" data-end="{end:.2f}" '
            f'class="{"truth" if score is None else "window"}"><title>{escape(title)}</title></rect>',
        ]
    parts.append("</svg>")
    return "".join(parts)
