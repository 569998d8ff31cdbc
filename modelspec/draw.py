"""The model as a diagram (`modelspec draw`), like `keras.utils.plot_model(model, show_shapes=True)`
but without Graphviz: one box per layer (and one for the input) with its Keras name and class,
output shape and parameter count, an arrow per connection, and a labelled frame around the layers
of each block use.

The layout is layered, top to bottom. A layer's rank (its row) is the longest path to it from the
input. The main path, a longest path (from the output back to the input through the operand of the
highest rank, the first such: the previous output for `add h`), is one straight column with a box
on every row. Everything else, branch layers and arrows that skip rows, gets a vertical lane
beside it, on the right: lanes are handed out shortest span first, so a short skip nests inside a
longer one and their arrows do not cross, and a branch layer prefers the lane of the layer it
reads, so a branch stays a straight column too (a skip from the main path back to it goes on the
left where branch layers sit on its rows). A lane's position is set row by row against what lies
nearer the main path, so a skip runs close beside the block it skips instead of past the widest
box of the whole model. Arrows leave a box at the middle of its bottom and enter a merge's top in
the order their lanes lie, the main operand in the middle.

`layout` computes every shape in pixels; `to_svg` writes them as SVG text (no dependency) and
`to_png` draws the same shapes with matplotlib's Agg renderer. Text is measured with the font
matplotlib ships (DejaVu Sans), which the SVG names first: a viewer without it falls back to
Verdana (as wide) or a narrower sans-serif, so text always fits its box. Nothing here is imported
by the checker: `modelspec check` never pays for matplotlib.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from .shapes import fmt_shape

FONT = "DejaVu Sans"
FONT_FAMILY = "DejaVu Sans, Verdana, Geneva, sans-serif"
NAME_SIZE = 12.0  # px (1 px = 1 pt in the PNG's coordinates)
DETAIL_SIZE = 11.0
LABEL_SIZE = 11.0
TITLE_SIZE = 13.0

BOX_H = 44.0
BOX_PAD_X = 14.0
BOX_MIN_W = 110.0
NAME_BASELINE = 18.0  # below the box's top
DETAIL_BASELINE = 35.0
VGAP = 36.0  # between rows
HGAP = 28.0  # between lanes, before frames widen it
MARGIN = 16.0
TITLE_H = 30.0
ARROW_LEN = 8.0
ARROW_HALF = 4.0
ENTRY_INSET = 12.0  # how far from a box's corners arrows may enter its top
FRAME_PAD = 10.0  # a frame's margin around what it holds
LABEL_H = 16.0  # a frame's label strip, above the rows it holds

STYLE = {  # fill, stroke
    "input": ("#e7f4e4", "#4b8a47"),
    "layer": ("#eaf1fb", "#4a6fa5"),
    "merge": ("#fdf1dc", "#c0852a"),
}
TEXT = "#1b1f24"
DETAIL = "#4d5560"
EDGE = "#5f6670"
FRAME_FILL, FRAME_STROKE, FRAME_TEXT = "#f6f7f9", "#98a2b3", "#3d4654"


@dataclass
class Box:
    """A layer (row position in report.layers; -1: the input) drawn at (x, y) = its top-left."""

    node: int
    name: str
    keras_class: str
    shape: str
    params: int | None  # None for the input
    style: str
    x: float
    y: float
    w: float
    h: float = BOX_H

    @property
    def title(self) -> str:
        return f"{self.name} ({self.keras_class})"

    @property
    def detail(self) -> str:
        if self.params is None:
            return self.shape
        return f"{self.shape} · {self.params:,} param{'' if self.params == 1 else 's'}"

    @property
    def cx(self) -> float:
        return self.x + self.w / 2


@dataclass
class Edge:
    """The arrow from `source` to operand `operand` of `target`: a path of ("M", x, y),
    ("L", x, y) and ("C", x1, y1, x2, y2, x, y) commands, and the arrowhead's three corners."""

    source: int
    target: int
    operand: int
    path: list[tuple]
    head: tuple[tuple[float, float], ...]


@dataclass
class Frame:
    """A block use's frame: the layers spec.layers[start:stop], labelled `block(p=v, ...)`."""

    use: int  # its index in spec.blocks
    block: str
    label: str
    x: float
    y: float
    w: float
    h: float
    members: list[int] = field(default_factory=list)  # row positions


@dataclass
class Diagram:
    title: str
    width: int
    height: int
    boxes: list[Box]
    edges: list[Edge]
    frames: list[Frame]


def text_width(text: str, size: float, bold: bool = False) -> float:
    """The width of `text` in DejaVu Sans at `size` (pt, here px): the sum of its characters'
    advances, which is what Agg lays out less kerning (a pixel or so), so the text fits."""
    return sum(_advance(c, size, bold) for c in text)


@functools.lru_cache(maxsize=None)
def _advance(char: str, size: float, bold: bool) -> float:
    from matplotlib.font_manager import FontProperties, findfont, get_font

    font = get_font(findfont(FontProperties(family=FONT, weight="bold" if bold else "normal")))
    font.set_size(size, 72)  # the font object is shared: set its size for every glyph
    return font.load_char(ord(char)).linearHoriAdvance / 65536  # 16.16 fixed point, unhinted


def layout(report: Any) -> Diagram:
    """Every box, arrow and frame of `report`'s model (a checker Report), in pixels."""
    rows = report.layers
    n = len(rows)
    sources = {i: tuple(r.sources) for i, r in enumerate(rows)}
    sources[-1] = ()
    nodes = [-1, *range(n)]

    rank = {-1: 0}
    for i in range(n):  # sources come first in report.layers
        rank[i] = 1 + max(rank[s] for s in sources[i])
    main = {-1}
    m = n - 1
    while m != -1:
        main.add(m)
        m = max(sources[m], key=lambda s: rank[s])  # the first operand of the highest rank

    boxes = {-1: _box(-1, "input_layer", "InputLayer", report.input_shape, None, "input")}
    for i, r in enumerate(rows):
        boxes[i] = _box(i, r.name, r.keras_class, r.output_shape, r.params,
                        "merge" if r.layer.merges else "layer")

    edges = [(s, t, k) for t in range(n) for k, s in enumerate(sources[t])]
    # an arrow spanning rows runs down a lane (the main path's arrows span one row each)
    routed = [e for e in edges if rank[e[1]] - rank[e[0]] > 1]
    written = {-1: -1, **{i: r.index for i, r in enumerate(rows)}}
    lane, route_lane = _lanes(nodes, main, rank, sources, routed, written)

    last = max(rank.values())
    frames_of = _frame_spans(report, rank)
    row_y = _row_tops(last, frames_of)
    for i, b in boxes.items():
        b.y = row_y[rank[i]]

    x_of, route_x = _columns(boxes, lane, route_lane, rank, routed, last, _gaps(last, frames_of))
    for i, b in boxes.items():
        b.x = x_of[i] - b.w / 2

    arrows = _arrows(boxes, edges, rank, route_x, row_y)
    frames = _frames(report, boxes, arrows, routed, route_x, rank, frames_of)

    # shift everything so the drawing starts at the margin, below the title; lanes of arrows
    # can lie beyond every box
    lanes = list(route_x.values())
    left = min([b.x for b in boxes.values()] + [f.x for f in frames] + lanes)
    right = max([b.x + b.w for b in boxes.values()] + [f.x + f.w for f in frames] + lanes)
    top = min([b.y for b in boxes.values()] + [f.y for f in frames])
    dx, dy = MARGIN - left, MARGIN + TITLE_H - top
    for b in boxes.values():
        b.x += dx
        b.y += dy
    for f in frames:
        f.x += dx
        f.y += dy
    for a in arrows:
        a.path = [(c[0], *(v + (dx if j % 2 == 0 else dy) for j, v in enumerate(c[1:]))) for c in a.path]
        a.head = tuple((x + dx, y + dy) for x, y in a.head)
    bottom = max([b.y + b.h for b in boxes.values()] + [f.y + f.h for f in frames])
    title = f"{report.model} · {report.total_params:,} params"
    width = max(right - left, text_width(title, TITLE_SIZE, True)) + 2 * MARGIN
    # whole pixels: the PNG is exactly the SVG's size times its scale
    return Diagram(title, math.ceil(width), math.ceil(bottom + MARGIN), [boxes[i] for i in nodes], arrows, frames)


def _box(node: int, name: str, keras_class: str, shape: tuple, params: int | None, style: str) -> Box:
    b = Box(node, name, keras_class, fmt_shape(shape), params, style, 0.0, 0.0, 0.0)
    b.w = max(BOX_MIN_W, text_width(b.title, NAME_SIZE, True) + 2 * BOX_PAD_X,
              text_width(b.detail, DETAIL_SIZE) + 2 * BOX_PAD_X)
    return b


def _lanes(nodes: list[int], main: set[int], rank: dict, sources: dict, routed: list[tuple],
           written: dict[int, int]) -> tuple[dict[int, int], dict[tuple, int]]:
    """Lane 0 is the main path. Every other layer (one row) and every routed arrow (the rows
    it passes) gets the nearest lane right of it that is free over those rows, shortest span
    first (a shorter skip nests inside a longer one, so they do not cross); a layer or an
    arrow prefers the lane of the layer it comes from (a branch stays straight). A skip from
    the main path back to it takes the left side instead where branch layers sit on its rows,
    as an Inception-ResNet block is drawn: it would cross their arrows on the right. Ties go
    in the order the spec writes the layers (`written`), so parallel branches read left to
    right as written."""
    lane = {i: 0 for i in main}
    route_lane: dict[tuple, int] = {}
    busy: dict[int, set[int]] = {}
    branch_rows = {rank[i] for i in nodes if i not in main}
    todo = [(1, rank[i], 0, (written[i], 0), i) for i in nodes if i not in main]
    todo += [(rank[t] - rank[s] - 1, rank[s] + 1, 1, (written[t], k), (s, t, k)) for s, t, k in routed]
    for span, start, _, _, item in sorted(todo, key=lambda o: o[:4]):
        rows = set(range(start, start + span))
        if isinstance(item, tuple):
            origin = item[0]
            step = -1 if origin in main and item[1] in main and not branch_rows.isdisjoint(rows) else 1
        else:
            origin, step = sources[item][0], 1
        # in half rows (row r is 2r, the gap below it 2r + 1): an occupant holds its rows and the
        # gaps above and below, where its arrows bend in and out; only what it comes from, right
        # above it in the same lane, may share the gap above
        cells = set(range(2 * start, 2 * (start + span) - 1))
        below, above = {2 * (start + span) - 1}, {2 * start - 1}
        choice = lane.get(origin, 0)
        if choice == 0 or not busy[choice].isdisjoint(cells | below):
            choice = step
            while not busy.setdefault(choice, set()).isdisjoint(cells | below | above):
                choice += step
        busy.setdefault(choice, set()).update(cells | below | above)
        if isinstance(item, tuple):
            route_lane[item] = choice
        else:
            lane[item] = choice
    return lane, route_lane


def _columns(boxes: dict[int, Box], lane: dict, route_lane: dict, rank: dict, routed: list,
             last: int, gaps: list[float]) -> tuple[dict[int, float], dict[tuple, float]]:
    """The x of each box's centre and of each routed arrow's lane. Lane 0 is at x = 0; the
    lanes on either side are placed outwards, stretch by stretch (a lane's occupants on
    consecutive rows share one x), the row's gap beyond whatever the lanes nearer the main
    path hold on those rows."""
    x_of = {i: 0.0 for i, l in lane.items() if l == 0}
    route_x: dict[tuple, float] = {}
    reach = {1: [0.0] * (last + 1), -1: [0.0] * (last + 1)}  # per side and row: how far out it is taken
    for i in x_of:
        for side in reach.values():
            side[rank[i]] = max(side[rank[i]], boxes[i].w / 2)
    by_lane: dict[int, list] = {}
    for i, l in lane.items():
        if l:
            by_lane.setdefault(l, []).append((rank[i], rank[i], boxes[i].w / 2, i))
    for e in routed:
        by_lane.setdefault(route_lane[e], []).append((rank[e[0]] + 1, rank[e[1]] - 1, 0.0, e))
    for l in sorted(by_lane, key=abs):
        sign = 1 if l > 0 else -1
        taken = reach[sign]
        occupants = sorted(by_lane[l], key=lambda o: o[:2])
        stretches: list[list] = []
        for o in occupants:
            if stretches and o[0] <= max(p[1] for p in stretches[-1]) + 1:
                stretches[-1].append(o)
            else:
                stretches.append([o])
        for stretch in stretches:
            rows = range(min(o[0] for o in stretch), max(o[1] for o in stretch) + 1)
            distance = max(taken[r] + gaps[r] for r in rows) + max(o[2] for o in stretch)
            for first, end, half, item in stretch:
                if isinstance(item, tuple):
                    route_x[item] = sign * distance
                else:
                    x_of[item] = sign * distance
                for r in range(first, end + 1):
                    taken[r] = max(taken[r], distance + half)
    return x_of, route_x


def _arrows(boxes: dict[int, Box], edges: list[tuple], rank: dict, route_x: dict, row_y: list[float]
            ) -> list[Edge]:
    """Each arrow leaves its source at the middle of the bottom and enters its target's top:
    an arrow arriving straight from above in the middle, the others spread towards the side
    they come from, in the order their lanes lie."""
    arrive = {e: route_x.get(e, boxes[e[0]].cx) for e in edges}  # the x an arrow comes down at
    entry: dict[tuple, float] = {}
    by_target: dict[int, list] = {}
    for e in edges:
        by_target.setdefault(e[1], []).append(e)
    for t, incoming in by_target.items():
        b = boxes[t]
        incoming.sort(key=lambda e: (arrive[e], e[2]))
        lo, hi = b.x + ENTRY_INSET, b.x + b.w - ENTRY_INSET
        straight = [e for e in incoming if abs(arrive[e] - b.cx) < 0.5]
        if len(incoming) == 1:
            entry[incoming[0]] = b.cx
        elif straight:  # the first straight one keeps the middle; the others go to their side
            middle = straight[0]
            left = [e for e in incoming if arrive[e] < arrive[middle] or (e in straight and e[2] < middle[2])]
            right = [e for e in incoming if e is not middle and e not in left]
            entry[middle] = b.cx
            for j, e in enumerate(reversed(left)):
                entry[e] = b.cx - (b.cx - lo) * (j + 1) / len(left)
            for j, e in enumerate(right):
                entry[e] = b.cx + (hi - b.cx) * (j + 1) / len(right)
        else:
            for j, e in enumerate(incoming):
                entry[e] = lo + (hi - lo) * (j + 0.5) / len(incoming)
    out = []
    for e in edges:
        s, t, k = e
        sx, sy = boxes[s].cx, boxes[s].y + boxes[s].h
        tx, ty = entry[e], boxes[t].y
        end = ty - ARROW_LEN
        path: list[tuple] = [("M", sx, sy)]
        if e in route_x:
            lx = route_x[e]
            top, bottom = row_y[rank[s] + 1], row_y[rank[t] - 1] + BOX_H
            path.append(_bend(sx, sy, lx, top))
            path.append(("L", lx, bottom))
            path.append(_bend(lx, bottom, tx, end))
        else:
            path.append(_bend(sx, sy, tx, end))
        out.append(Edge(s, t, k, path, ((tx, ty), (tx - ARROW_HALF, end), (tx + ARROW_HALF, end))))
    return out


def _bend(x0: float, y0: float, x1: float, y1: float) -> tuple:
    """From (x0, y0) down to (x1, y1): a straight line, or an S-curve leaving and arriving vertically."""
    if abs(x1 - x0) < 0.5:
        return ("L", x1, y1)
    mid = (y0 + y1) / 2
    return ("C", x0, mid, x1, mid, x1, y1)


def _frame_spans(report: Any, rank: dict) -> list[tuple[int, int, int, int]]:
    """(use, first row, last row, nesting depth within it) of each block use that holds a layer."""
    uses = report.spec.blocks
    position = {r.index: p for p, r in enumerate(report.layers)}
    depth = [0] * len(uses)
    for j in reversed(range(len(uses))):  # a use comes after the use it sits in
        parent = uses[j].parent
        if parent is not None:
            depth[parent] = max(depth[parent], depth[j] + 1)
    out = []
    for j, u in enumerate(uses):
        members = [position[i] for i in range(u.start, u.stop)]
        if members:  # a block with an empty body has no frame
            out.append((j, min(rank[p] for p in members), max(rank[p] for p in members), depth[j]))
    return out


def _row_tops(last: int, frames_of: list) -> list[float]:
    """The top of each row: rows VGAP apart, more where frames begin (their label strips and
    margins, nested ones stacked) or end."""
    above = [0.0] * (last + 1)  # room frames starting on a row need above it
    below = [0.0] * (last + 1)
    for _, first, end, depth in frames_of:
        above[first] = max(above[first], (depth + 1) * (LABEL_H + FRAME_PAD))
        below[end] = max(below[end], (depth + 1) * FRAME_PAD)
    tops = [0.0]
    for r in range(1, last + 1):
        tops.append(tops[-1] + BOX_H + max(VGAP, below[r - 1] + above[r] + 14))
    return tops


def _gaps(last: int, frames_of: list) -> list[float]:
    """The gap between lanes on each row: HGAP, widened by the frames (FRAME_PAD a side per
    level of nesting) that may have to fit between them there."""
    gaps = [HGAP] * (last + 1)
    for _, first, end, depth in frames_of:
        for r in range(first, end + 1):
            gaps[r] = max(gaps[r], HGAP + 2 * FRAME_PAD * (depth + 1))
    return gaps


def _frames(report: Any, boxes: dict[int, Box], arrows: list[Edge], routed: list, route_x: dict,
            rank: dict, frames_of: list) -> list[Frame]:
    """A frame per block use around its layers, the lanes of arrows into them that stay within
    its rows, and the frames of the uses inside it; its label sits in a strip along its top,
    left of where arrows come in."""
    uses = report.spec.blocks
    position = {r.index: p for p, r in enumerate(report.layers)}
    entries: dict[int, list[float]] = {}
    for a in arrows:
        entries.setdefault(a.target, []).append(a.head[0][0])
    built: dict[int, Frame] = {}
    # inner uses first (they come after the use they sit in)
    for j, first, end, depth in sorted(frames_of, key=lambda f: -f[0]):
        u = uses[j]
        members = [position[i] for i in range(u.start, u.stop)]
        inner = [f for k, f in built.items() if uses[k].parent == j]
        lefts = [boxes[p].x for p in members] + [f.x for f in inner]
        rights = [boxes[p].x + boxes[p].w for p in members] + [f.x + f.w for f in inner]
        lanes = [route_x[e] for e in routed if e[1] in members and first <= rank[e[0]] + 1 and rank[e[1]] - 1 <= end]
        lefts += lanes
        rights += lanes
        tops = [boxes[p].y for p in members] + [f.y for f in inner]
        bottoms = [boxes[p].y + BOX_H for p in members] + [f.y + f.h for f in inner]
        label = u.block + "(" + ", ".join(f"{p}={v}" for p, v in u.arguments) + ")"
        x0, x1 = min(lefts) - FRAME_PAD, max(rights) + FRAME_PAD
        # the label must end before the first arrow that comes into the frame's first row
        firsts = [p for p in members if rank[p] == first]
        limit = min([x for p in firsts for x in entries.get(p, [boxes[p].cx])] + lanes) - 6
        x0 = min(x0, limit - text_width(label, LABEL_SIZE, True) - 8)
        y0 = min(tops) - LABEL_H - FRAME_PAD
        y1 = max(bottoms) + FRAME_PAD
        built[j] = Frame(j, u.block, label, x0, y0, x1 - x0, y1 - y0, sorted(members))
    return [built[j] for j in sorted(built)]


def to_svg(d: Diagram) -> str:
    """The diagram as a standalone SVG document: a <g class="layer"> per box (data-name, its
    Keras name), a <g class="edge"> per arrow (data-source, data-target), a <g class="block">
    per frame."""
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{d.width:.0f}" height="{d.height:.0f}" '
           f'viewBox="0 0 {d.width:.0f} {d.height:.0f}" font-family={quoteattr(FONT_FAMILY)}>',
           f"<title>{escape(d.title)}</title>",
           '<rect width="100%" height="100%" fill="#ffffff"/>',
           f'<text x="{MARGIN:.1f}" y="{MARGIN + TITLE_SIZE:.1f}" font-size="{TITLE_SIZE:g}" font-weight="bold" '
           f'fill="{TEXT}">{escape(d.title)}</text>']
    for f in d.frames:
        out.append(f'<g class="block" data-use="{f.use}" data-block={quoteattr(f.block)}>'
                   f'<rect x="{f.x:.1f}" y="{f.y:.1f}" width="{f.w:.1f}" height="{f.h:.1f}" rx="8" '
                   f'fill="{FRAME_FILL}" stroke="{FRAME_STROKE}" stroke-dasharray="5 3"/>'
                   f'<text x="{f.x + 8:.1f}" y="{f.y + 4 + LABEL_SIZE:.1f}" font-size="{LABEL_SIZE:g}" '
                   f'font-weight="bold" fill="{FRAME_TEXT}">{escape(f.label)}</text></g>')
    names = {b.node: b.name for b in d.boxes}
    for e in d.edges:
        path = " ".join(c[0] + " " + " ".join(f"{v:.1f}" for v in c[1:]) for c in e.path)
        head = " ".join(f"{x:.1f},{y:.1f}" for x, y in e.head)
        out.append(f'<g class="edge" data-source={quoteattr(names[e.source])} data-target={quoteattr(names[e.target])}>'
                   f'<path d="{path}" fill="none" stroke="{EDGE}" stroke-width="1.3"/>'
                   f'<polygon points="{head}" fill="{EDGE}"/></g>')
    for b in d.boxes:
        fill, stroke = STYLE[b.style]
        out.append(f'<g class="layer" data-name={quoteattr(b.name)}><title>{escape(b.title)}</title>'
                   f'<rect x="{b.x:.1f}" y="{b.y:.1f}" width="{b.w:.1f}" height="{b.h:.1f}" rx="6" '
                   f'fill="{fill}" stroke="{stroke}" stroke-width="1.3"/>'
                   f'<text x="{b.cx:.1f}" y="{b.y + NAME_BASELINE:.1f}" text-anchor="middle" '
                   f'font-size="{NAME_SIZE:g}" font-weight="bold" fill="{TEXT}">{escape(b.title)}</text>'
                   f'<text x="{b.cx:.1f}" y="{b.y + DETAIL_BASELINE:.1f}" text-anchor="middle" '
                   f'font-size="{DETAIL_SIZE:g}" fill="{DETAIL}">{escape(b.detail)}</text></g>')
    out.append("</svg>\n")
    return "\n".join(out)


MAX_PNG_SIDE = 30_000  # Agg refuses images of 2**16 pixels or more a side


def to_png(d: Diagram, scale: float = 2.0) -> bytes:
    """The same shapes drawn by matplotlib (Agg), `scale` pixels per SVG pixel (less for a
    diagram that would pass MAX_PNG_SIDE pixels)."""
    import io

    from matplotlib.collections import PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch, PathPatch, Polygon
    from matplotlib.path import Path

    scale = min(scale, MAX_PNG_SIDE / max(d.width, d.height))
    fig = Figure(figsize=(d.width / 72, d.height / 72), dpi=72 * scale, facecolor="white")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, d.width)
    ax.set_ylim(d.height, 0)  # y down, as in SVG
    ax.set_axis_off()
    lw = 1.3  # points, which at 72 per inch are the SVG's pixels

    def text(x, y, s, size, color, bold=False, anchor="left"):
        ax.text(x, y, s, fontsize=size, family=FONT, weight="bold" if bold else "normal", color=color,
                ha=anchor, va="baseline")

    def shapes(patches, **style):  # one collection: adding thousands of patches one by one is slow
        ax.add_collection(PatchCollection(patches, match_original=False, **style), autolim=False)

    text(MARGIN, MARGIN + TITLE_SIZE, d.title, TITLE_SIZE, TEXT, bold=True)
    shapes([FancyBboxPatch((f.x, f.y), f.w, f.h, boxstyle="round,pad=0,rounding_size=8") for f in d.frames],
           facecolor=FRAME_FILL, edgecolor=FRAME_STROKE, linewidth=1.0, linestyle=(0, (5, 3)))
    for f in d.frames:
        text(f.x + 8, f.y + 4 + LABEL_SIZE, f.label, LABEL_SIZE, FRAME_TEXT, bold=True)
    lines = []
    for e in d.edges:
        vertices, codes = [], []
        for c in e.path:
            vertices += list(zip(c[1::2], c[2::2]))
            codes += {"M": [Path.MOVETO], "L": [Path.LINETO], "C": [Path.CURVE4] * 3}[c[0]]
        lines.append(PathPatch(Path(vertices, codes)))
    shapes(lines, facecolor="none", edgecolor=EDGE, linewidth=lw, capstyle="butt")
    shapes([Polygon(e.head, closed=True) for e in d.edges], facecolor=EDGE, edgecolor="none")
    for style, (fill, stroke) in STYLE.items():
        shapes([FancyBboxPatch((b.x, b.y), b.w, b.h, boxstyle="round,pad=0,rounding_size=6")
                for b in d.boxes if b.style == style], facecolor=fill, edgecolor=stroke, linewidth=lw)
    for b in d.boxes:
        text(b.cx, b.y + NAME_BASELINE, b.title, NAME_SIZE, TEXT, bold=True, anchor="center")
        text(b.cx, b.y + DETAIL_BASELINE, b.detail, DETAIL_SIZE, DETAIL, anchor="center")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72 * scale, facecolor="white")
    return buf.getvalue()
