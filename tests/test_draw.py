"""`modelspec draw`: the diagram holds a box per layer (and the input) with what the checker
reports, an arrow per connection, a labelled frame per block use; it is clean (no box overlaps
another, no arrow runs through a box, the main path is straight, skip arrows do not cross); the
PNG is a real image of the same drawing; the command fails as every command does."""

from __future__ import annotations

import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib

import pytest

import modelspec as ms
from corpus import ROOT, SPEC_FILES, TINY_RESNET, VARIED, modelspec_cli
from modelspec.draw import BOX_H, FRAME_PAD, HGAP, VGAP, Diagram, layout, to_png, to_svg
from modelspec.shapes import fmt_shape

SVG = "{http://www.w3.org/2000/svg}"


# a projection shortcut, an inception-style branch, blocks inside a block, a skip outside blocks
MIXED = """\
model mixed
input 16x16x3
conv2d 8 3x3 relu padding=same
block proj(f) {
  skip = conv2d f 1x1 stride=2
  conv2d f 3x3 stride=2 padding=same relu from=in
  conv2d f 3x3 padding=same
  add skip
  relu
}
block inception(f) {
  a = conv2d f 1x1 relu padding=same
  b = conv2d f 3x3 relu padding=same from=in
  c = maxpool2d 3x3 stride=1 padding=same from=in
  concat a b c
}
block stage(f) {
  proj f
  inception f
}
stage 8
h = conv2d 16 1x1 relu
conv2d 16 3x3 padding=same relu
conv2d 16 3x3 padding=same
add h
globalavgpool2d
dense 10 softmax
"""

# 29 layers: residual blocks, a strided projection block, repeats
RESNET30 = """\
model resnet30
input 32x32x3
conv2d 16 3x3 relu padding=same
block residual(filters) {
  conv2d filters 3x3 relu padding=same
  conv2d filters 3x3 padding=same
  batchnorm
  add in
  relu
}
block down(filters) {
  skip = conv2d filters 1x1 stride=2
  conv2d filters 3x3 stride=2 padding=same relu from=in
  conv2d filters 3x3 padding=same
  add skip
  relu
}
repeat 2 { residual 16 }
down 32
repeat 2 { residual 32 }
globalavgpool2d
dropout 0.2
dense 10 softmax
"""

# merges of every arity and side: operands listed explicitly, a fan-out, a merge of merges
BRANCHES = """\
input 12
a = dense 8 relu
b = dense 8 relu from=in
c = dense 8 from=in
s = add a b c
m = maximum b c
concat s m a
dense 4 softmax
"""

# an Inception-ResNet block: branches on the right, so the skip goes down the left
INCEPTION_RESNET = """\
model inception_resnet
input 16x16x8
conv2d 8 3x3 relu padding=same
block ir(f) {
  a = conv2d f 1x1 relu padding=same
  b = conv2d f 3x3 relu padding=same from=in
  c = conv2d f 1x1 relu padding=same from=in
  c2 = conv2d f 3x3 relu padding=same
  concat a b c2
  conv2d 8 1x1 padding=same
  add in
  relu
}
ir 4
ir 4
globalavgpool2d
dense 10 softmax
"""

# the last layers sit in a block inside a block: the frames end the drawing
ENDS_IN_BLOCKS = """\
input 8
block head(n) {
  h = dense n relu
  dense n relu
  add h
  dense 2 softmax
}
block tail(n) {
  dense n
  head n
}
tail 4
"""

# DenseNet-style: every layer reads all before it; its skips lie beyond every box
DENSE = """\
input 8
a = dense 4
b = dense 4
ab = concat a b
c = dense 4
abc = concat a b c
d = dense 4
concat a b c d
dense 2
"""

GRAPHS = {"tiny_resnet": TINY_RESNET, "mixed": MIXED, "resnet30": RESNET30, "branches": BRANCHES,
          "inception_resnet": INCEPTION_RESNET, "ends_in_blocks": ENDS_IN_BLOCKS, "dense": DENSE}
CHAINS = {**{p.stem: p for p in SPEC_FILES}, **VARIED}
ALL = {**GRAPHS, **CHAINS}


def report_of(source):
    return ms.check(ms.parse(source))


def params_text(n: int) -> str:
    return f"{n:,} param{'' if n == 1 else 's'}"


def svg_tree(report):
    return ET.fromstring(to_svg(layout(report)))


@pytest.mark.parametrize("name", ALL)
def test_a_box_per_layer_and_the_input_with_what_the_checker_reports(name):
    report = report_of(ALL[name])
    root = svg_tree(report)
    boxes = root.findall(f".//{SVG}g[@class='layer']")
    seen = [(g.get("data-name"), [t.text for t in g.findall(f"{SVG}text")]) for g in boxes]
    expected = [("input_layer", ["input_layer (InputLayer)", fmt_shape(report.input_shape)])]
    expected += [(r.name, [f"{r.name} ({r.keras_class})", f"{fmt_shape(r.output_shape)} · {params_text(r.params)}"])
                 for r in report.layers]
    assert seen == expected
    assert sum(r.params for r in report.layers) == report.total_params
    assert f"{report.total_params:,} params" in root.find(f"{SVG}title").text


@pytest.mark.parametrize("name", ALL)
def test_an_arrow_per_connection(name):
    report = report_of(ALL[name])
    arrows = sorted((g.get("data-source"), g.get("data-target"))
                    for g in svg_tree(report).findall(f".//{SVG}g[@class='edge']"))
    # `inputs` are the names Keras's summary shows under "Connected to" (self-attention's twice,
    # as query and value: one arrow)
    assert arrows == sorted((source, r.name) for r in report.layers for source in dict.fromkeys(r.inputs))
    if report.functional:
        assert len(arrows) > len(report.layers)  # a merge reads two or more


def test_names_with_spaces_and_quotes_are_escaped():
    report = report_of('model "a <b> & \\"c\\""\ninput 4\ndense 3 name="x & <y>"\ndense 2\n')
    root = svg_tree(report)
    assert root.find(f"{SVG}title").text.startswith('a <b> & "c"')
    assert [g.get("data-name") for g in root.findall(f".//{SVG}g[@class='layer']")][1] == "x & <y>"


def frames_in(report):
    return [(g.get("data-block"), g.find(f"{SVG}text").text)
            for g in svg_tree(report).findall(f".//{SVG}g[@class='block']")]


def test_each_block_use_is_a_labelled_frame():
    assert frames_in(report_of(TINY_RESNET)) == [("residual", "residual(filters=8)")] * 2
    assert frames_in(report_of(MIXED)) == [("stage", "stage(f=8)"), ("proj", "proj(f=8)"),
                                           ("inception", "inception(f=8)")]
    assert frames_in(report_of(RESNET30)) == [("residual", "residual(filters=16)")] * 2 + \
        [("down", "down(filters=32)")] + [("residual", "residual(filters=32)")] * 2
    assert frames_in(report_of(BRANCHES)) == []
    assert frames_in(report_of(INCEPTION_RESNET)) == [("ir", "ir(f=4)")] * 2
    assert frames_in(report_of(ENDS_IN_BLOCKS)) == [("tail", "tail(n=4)"), ("head", "head(n=4)")]


def inside(inner, outer) -> bool:
    return (outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3])


def rect(b) -> tuple[float, float, float, float]:
    return (b.x, b.y, b.x + b.w, b.y + b.h)


def overlap(a, b, margin: float = 0.0) -> bool:
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


@pytest.mark.parametrize("name", GRAPHS)
def test_a_frame_holds_its_layers_and_inner_frames_and_no_other_layer(name):
    report = report_of(GRAPHS[name])
    d = layout(report)
    uses = report.spec.blocks
    frames = {f.use: f for f in d.frames}
    assert sorted(frames) == list(range(len(uses)))
    by_node = {b.node: b for b in d.boxes}
    for j, f in frames.items():
        members = {p for p, r in enumerate(report.layers) if uses[j].start <= r.index < uses[j].stop}
        assert set(f.members) == members
        box = (f.x, f.y, f.x + f.w, f.y + f.h)
        for node, b in by_node.items():
            if node in members:
                assert inside(rect(b), box)
            else:
                assert not overlap(rect(b), box), (f.label, b.name)
        if uses[j].parent is not None:
            p = frames[uses[j].parent]
            assert inside(box, (p.x, p.y, p.x + p.w, p.y + p.h))


def points(edge, steps: int = 24) -> list[tuple[float, float]]:
    """The arrow's line, its curves sampled."""
    out, here = [], None
    for c in edge.path:
        if c[0] == "C":
            (x1, y1), (x2, y2), (x3, y3) = zip(c[1::2], c[2::2])
            x0, y0 = here
            for i in range(1, steps + 1):
                t = i / steps
                u = 1 - t
                out.append((u ** 3 * x0 + 3 * u * u * t * x1 + 3 * u * t * t * x2 + t ** 3 * x3,
                            u ** 3 * y0 + 3 * u * u * t * y1 + 3 * u * t * t * y2 + t ** 3 * y3))
        else:
            out.append((c[1], c[2]))
        here = out[-1]
    return out


def crosses(p, q) -> bool:
    """Whether segments p and q cross (strictly; touching ends do not count)."""
    def side(a, b, c):
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    d1, d2 = side(q[0], q[1], p[0]), side(q[0], q[1], p[1])
    d3, d4 = side(p[0], p[1], q[0]), side(p[0], p[1], q[1])
    return d1 * d2 < -1e-6 and d3 * d4 < -1e-6


@pytest.mark.parametrize("name", ALL)
def test_the_drawing_is_clean(name):
    report = report_of(ALL[name])
    d: Diagram = layout(report)
    boxes = d.boxes
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not overlap(rect(a), rect(b), margin=8), (a.name, b.name)
        assert 0 <= a.x and a.x + a.w <= d.width and 0 <= a.y and a.y + a.h <= d.height
    for f in d.frames:
        assert 0 <= f.x and f.x + f.w <= d.width and 0 <= f.y and f.y + f.h <= d.height
    by_node = {b.node: b for b in boxes}
    for e in d.edges:
        s, t = by_node[e.source], by_node[e.target]
        line = points(e)
        assert all(0 < x < d.width and 0 < y < d.height for x, y in line)  # within the picture
        assert line[0] == (s.cx, s.y + s.h)  # leaves the middle of the source's bottom
        tip = e.head[0]
        assert tip[1] == t.y and t.x < tip[0] < t.x + t.w  # its head touches the target's top
        assert line[-1] == (tip[0], tip[1] - 8)
        for b in boxes:  # no arrow runs through a box
            r = (b.x + 1, b.y + 1, b.x + b.w - 1, b.y + b.h - 1)
            assert not any(r[0] < x < r[2] and r[1] < y < r[3] for x, y in line), (e.source, e.target, b.name)
    # arrows that share a lane are a row apart at least, so one is never read as going on into the other
    lanes = sorted((e.path[2][1], e.path[1][-1], e.path[2][2]) for e in d.edges if len(e.path) == 4)
    for (x0, _, end), (x1, start, _) in zip(lanes, lanes[1:]):
        assert x0 != x1 or start - end > BOX_H, (x0, end, start)
    # a longest path from the input to the output is one straight column, a box on every row
    rows = sorted({b.y for b in boxes})
    depth = {-1: 0}
    for i, r in enumerate(report.layers):
        depth[i] = 1 + max(depth[s] for s in r.sources)
    main, m = [], len(report.layers) - 1
    while m != -1:
        main.append(by_node[m])
        m = max(report.layers[m].sources, key=depth.get)
    main.append(by_node[-1])
    assert len(main) == len(rows) == depth[len(report.layers) - 1] + 1
    assert len({round(b.cx, 6) for b in main}) == 1
    assert [b.y for b in main] == rows[::-1]


def crossings(d: Diagram) -> list[tuple]:
    lines = [(e, points(e)) for e in d.edges]
    found = []
    for i, (e, p) in enumerate(lines):
        for f, q in lines[i + 1:]:
            if {e.source, e.target} & {f.source, f.target}:
                continue  # arrows that share a box meet there
            if any(crosses(a, b) for a in zip(p, p[1:]) for b in zip(q, q[1:])):
                found.append(((e.source, e.target), (f.source, f.target)))
    return found


@pytest.mark.parametrize("name", [n for n in GRAPHS if n != "dense"])  # dense: skips interleave
def test_arrows_cross_only_where_no_drawing_avoids_it(name):
    """In `branches`, b and c both feed add and maximum, which sit on one row: those four
    arrows between two rows cross at least once however the boxes are ordered; nothing else
    crosses, here or in the other graphs."""
    found = crossings(layout(report_of(GRAPHS[name])))
    assert len(found) == (1 if name == "branches" else 0), found


def test_a_skip_runs_close_beside_the_rows_it_passes():
    """A skip's lane is set against the boxes on its own rows, not the widest box of the model:
    HGAP from them outside frames, HGAP plus a frame margin each side inside one."""
    d = layout(report_of(MIXED))
    by_name = {b.name: b for b in d.boxes}
    index = {b.name: b.node for b in d.boxes}
    skip = next(e for e in d.edges if (e.source, e.target) == (index["conv2d_6"], index["add_1"]))
    lane = skip.path[2][1]
    passed = max(by_name[n].x + by_name[n].w for n in ("conv2d_7", "conv2d_8"))
    assert lane - passed == pytest.approx(HGAP)
    widest = by_name["global_average_pooling2d"]
    assert lane < widest.x + widest.w
    d = layout(report_of(TINY_RESNET))
    by_name = {b.name: b for b in d.boxes}
    skip = next(e for e in d.edges if (e.source, e.target) == (0, 4))  # conv2d -> add
    bn = by_name["batch_normalization"]
    assert skip.path[2][1] - (bn.x + bn.w) == pytest.approx(HGAP + 2 * FRAME_PAD)
    assert by_name["add"].y - (bn.y + BOX_H) == VGAP  # rows stay close


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("name", ["resnet30", "mnist"])
def test_the_png_is_the_drawing_at_twice_the_size(name):
    from matplotlib.image import imread
    import io

    d = layout(report_of(ALL[name]))
    data = to_png(d)
    width, height = png_size(data)
    assert (width, height) == (round(2 * d.width), round(2 * d.height))
    pixels = imread(io.BytesIO(data))
    assert pixels.shape[:2] == (height, width)
    # the boxes are drawn where the SVG puts them: the input box's fill colour at its centre
    b = d.boxes[0]
    r, g, bl = pixels[round(2 * (b.y + 6)), round(2 * (b.x + 6))][:3]
    assert (round(r * 255), round(g * 255), round(bl * 255)) == (0xE7, 0xF4, 0xE4)
    assert pixels[1, 1][:3].tolist() == [1.0, 1.0, 1.0]  # a white background


# ---- the command -------------------------------------------------------------------------

def test_draw_writes_svg_beside_the_spec_by_default(tmp_path):
    spec = tmp_path / "tiny_resnet.ms"
    spec.write_text(TINY_RESNET)
    done = modelspec_cli("draw", spec)
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"wrote {tmp_path / 'tiny_resnet.svg'}\n"
    root = ET.parse(tmp_path / "tiny_resnet.svg").getroot()
    assert len(root.findall(f".//{SVG}g[@class='layer']")) == 14
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny_resnet.ms", "tiny_resnet.svg"]  # no temporary left
    assert spec.read_text() == TINY_RESNET


def test_draw_writes_png_and_replaces_an_earlier_drawing(tmp_path):
    spec = tmp_path / "m.ms"
    spec.write_text(TINY_RESNET)
    out = tmp_path / "out" / "M.PNG"  # the folder is made; the extension's case does not matter
    for _ in range(2):
        done = modelspec_cli("draw", spec, "-o", out)
        assert done.returncode == 0, done.stderr
    width, height = png_size(out.read_bytes())
    d = layout(report_of(TINY_RESNET))
    assert (width, height) == (round(2 * d.width), round(2 * d.height))
    assert sorted(p.name for p in out.parent.iterdir()) == ["M.PNG"]


def test_draw_reads_standard_input_and_writes_standard_output():
    done = subprocess.run([sys.executable, "-m", "modelspec", "draw", "-"], input=TINY_RESNET.encode(),
                          capture_output=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert ET.fromstring(done.stdout).find(f"{SVG}title").text == "tiny_resnet · 2,714 params"


def test_draw_never_replaces_its_spec(tmp_path):
    spec = tmp_path / "model.ms"
    spec.write_text(TINY_RESNET)
    done = modelspec_cli("draw", spec, "-o", spec)
    assert done.returncode == 1
    assert "that is the input" in done.stderr and "Traceback" not in done.stderr
    assert spec.read_text() == TINY_RESNET
    named_svg = tmp_path / "model.svg"  # the default output of model.svg would be itself
    named_svg.write_text(TINY_RESNET)
    done = modelspec_cli("draw", named_svg)
    assert done.returncode == 1 and "that is the input" in done.stderr
    assert named_svg.read_text() == TINY_RESNET


def test_an_output_that_is_a_folder_or_cannot_be_written(tmp_path):
    """As compile -o, import -o and predict --output (tests/test_cli_outputs.py)."""
    (tmp_path / "spec.ms").write_text(TINY_RESNET)
    (tmp_path / "folder.svg").mkdir()
    (tmp_path / "a_file").write_text("")
    done = modelspec_cli("draw", "spec.ms", "-o", "folder.svg", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == "modelspec: error: -o folder.svg: is a folder; expected a file name\n"
    done = modelspec_cli("draw", "spec.ms", "-o", "a_file/out.svg", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.startswith("modelspec: error: -o a_file/out.svg: cannot write in ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "folder.svg", "spec.ms"]
    assert not list((tmp_path / "folder.svg").iterdir())


@pytest.mark.parametrize("output", ["model.pdf", "model", "model.svg.txt"])
def test_an_unknown_image_format_is_a_usage_error_naming_svg_and_png(tmp_path, output):
    spec = tmp_path / "model.ms"
    spec.write_text(TINY_RESNET)
    done = modelspec_cli("draw", spec, "-o", tmp_path / output)
    assert done.returncode == 2
    assert done.stderr.startswith(f"modelspec: error: -o {tmp_path / output}: ")
    assert ".svg or .png" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ms"]


def test_an_invalid_spec_is_reported_at_its_line_and_nothing_is_written(tmp_path):
    spec = tmp_path / "bad.ms"
    spec.write_text("input 8\nh = dense 4\ndense 4 from=in\nadd hh\n")
    done = modelspec_cli("draw", spec)
    assert done.returncode == 1
    assert done.stderr.startswith(f"{spec}:4:5: error: "), done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ms"]
    shapes = tmp_path / "shapes.ms"
    shapes.write_text("input 8\nh = dense 4\ndense 5 from=in\nadd h\n")
    done = modelspec_cli("draw", shapes)
    assert done.returncode == 1 and done.stderr.startswith(f"{shapes}:4:"), done.stderr
    missing = modelspec_cli("draw", tmp_path / "missing.ms")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


def test_check_does_not_import_the_drawing():
    code = ("import sys\nfrom modelspec.cli import main\n"
            "assert main(['check', *sys.argv[1:]]) == 0\n"
            "print(sorted(m for m in sys.modules if m == 'modelspec.draw' or m.split('.')[0] == 'matplotlib'))\n")
    done = subprocess.run([sys.executable, "-c", code, *map(str, SPEC_FILES)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
