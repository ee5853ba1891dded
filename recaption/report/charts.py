"""Charts as inline SVG: the HTML report needs no plotting library, no script and no network.

Only what the report draws: histograms, one colour per label, sharing the bins of
:func:`recaption.analysis.histogram` (the notebook's matplotlib plots use the same bins).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

#: One colour per label, in order (colour-blind safe: Okabe-Ito).
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _nice_step(span: float, target: int = 5) -> float:
    """A round tick step (1, 2, 5 × 10^k) giving about ``target`` ticks over ``span``."""
    import math

    if span <= 0:
        return 1.0
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return float(m * mag)
    return float(10 * mag)


def _fmt(x: float) -> str:
    return f"{x:g}" if abs(x) < 1e6 else f"{x:.3g}"


def histogram_svg(
    groups: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str = "captions",
    width: int = 560,
    height: int = 280,
    element_id: str | None = None,
) -> str:
    """Histograms of ``groups`` (label → values) sharing one set of bins, as one ``<svg>`` element.

    Each bin's bars stand side by side, one per label; the legend gives each label's mean and
    count. Every text is escaped.
    """
    from recaption.analysis import histogram

    values = [v for vs in groups.values() for v in vs]
    edges, _ = histogram(values)
    counts: dict[str, list[int]] = {}
    for label, vs in groups.items():
        c = [0] * (len(edges) - 1)
        for v in vs:
            # the last bin includes its right edge
            i = min(max(0, _bin(edges, float(v))), len(c) - 1)
            c[i] += 1
        counts[label] = c
    ymax = max((max(c) for c in counts.values() if c), default=1) or 1
    left, right, top, bottom = 48, 12, 30, 44
    pw, ph = width - left - right, height - top - bottom
    x0, x1 = edges[0], edges[-1]

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw if x1 > x0 else left

    def sy(y: float) -> float:
        return top + ph - y / ymax * ph

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}"' + (f' id="{_esc(element_id)}"' if element_id else "") + ">",
        f"<title>{_esc(title)}</title>",
        f'<text x="{left}" y="18" class="chart-title">{_esc(title)}</text>',
    ]
    # y grid and ticks
    step = max(1.0, _nice_step(ymax, 4))
    y = 0.0
    while y <= ymax + 1e-9:
        parts.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end" class="tick">{_fmt(y)}</text>'
        )
        y += step
    # bars: each bin split between the labels, side by side (overlaid bars hide each other)
    k_groups = max(1, len(counts))
    for n, (label, c) in enumerate(counts.items()):
        colour = COLOURS[n % len(COLOURS)]
        for i, k in enumerate(c):
            if not k:
                continue
            xa, xb = sx(edges[i]), sx(edges[i + 1])
            w = max(0.5, (xb - xa - 1) / k_groups)
            parts.append(
                f'<rect x="{xa + 0.5 + n * w:.1f}" y="{sy(k):.1f}" width="{w:.1f}" '
                f'height="{sy(0) - sy(k):.1f}" fill="{colour}" fill-opacity="0.85">'
                f"<title>{_esc(label)}: {k} in [{_fmt(edges[i])}, {_fmt(edges[i + 1])})</title></rect>"
            )
    # x axis and ticks (at integer values for integer bins)
    parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(0):.1f}" y2="{sy(0):.1f}" class="axis"/>')
    lo, hi = edges[0] + (0.5 if _integer_bins(edges) else 0.0), edges[-1]
    xstep = _nice_step(hi - lo, 6)
    import math

    x = math.ceil(lo / xstep) * xstep
    while x <= hi + 1e-9:
        parts.append(
            f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{sy(0):.1f}" y2="{sy(0) + 4:.1f}" class="axis"/>'
            f'<text x="{sx(x):.1f}" y="{sy(0) + 16:.1f}" text-anchor="middle" class="tick">{_fmt(x)}</text>'
        )
        x += xstep
    parts.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle" class="label">'
        f"{_esc(xlabel)}</text>"
        f'<text x="12" y="{top + ph / 2:.1f}" text-anchor="middle" class="label" '
        f'transform="rotate(-90 12 {top + ph / 2:.1f})">{_esc(ylabel)}</text>'
    )
    # legend, top right
    for n, (label, vs) in enumerate(groups.items()):
        colour = COLOURS[n % len(COLOURS)]
        mean = sum(vs) / len(vs) if vs else 0.0
        ly = top + 4 + 16 * n
        parts.append(
            f'<rect x="{left + pw - 190}" y="{ly}" width="10" height="10" fill="{colour}" '
            'fill-opacity="0.85"/>'
            f'<text x="{left + pw - 175}" y="{ly + 9}" class="legend">{_esc(label)}: mean {mean:.1f} '
            f"({len(vs):,})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _integer_bins(edges: Sequence[float]) -> bool:
    return all(float(e + 0.5).is_integer() for e in edges[:2])


def _bin(edges: Sequence[float], v: float) -> int:
    import bisect

    return bisect.bisect_right(list(edges), v) - 1
