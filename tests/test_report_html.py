"""The rendered report: a fabricated results folder through tables, figures and the papermill
notebook to results/report/index.html, opened in headless Chromium (Debian's `chromium`)."""

import base64
import html
import io as _io
import shutil
import subprocess
from html.parser import HTMLParser

import matplotlib.image as mpimg
import pandas as pd
import pytest
from qcbench import figures, io, stages
from qcbench.package_data import PAPER_REFERENCE
from qcbench.tables import TABLES, PaperReference, TableContext, table_inputs

from .conftest import ROOT
from .fabricate import CONFIG, lac_curve, make_cell, metrics_rows

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")]


class _Dom(HTMLParser):
    """Caption texts and <img> sources of a serialized DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.captions: list[str] = []
        self.images: list[str] = []
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        if tag == "caption":
            self._in_caption = True
            self.captions.append("")
        elif tag == "img":
            self.images.append(dict(attrs).get("src", ""))

    def handle_endtag(self, tag):
        if tag == "caption":
            self._in_caption = False

    def handle_data(self, data):
        if self._in_caption:
            self.captions[-1] += data


@pytest.fixture(scope="module")
def report(tmp_path_factory, idx_dir):
    """A fabricated results folder rendered the way the `table`, `figure` and `report` rules do."""
    root = make_cell(tmp_path_factory.mktemp("report"), idx_dir)
    res = root / "results"
    cells = []
    for i, row in metrics_rows().iterrows():
        path = res / f"cells/{i}.parquet"
        io.write_parquet(pd.DataFrame([row]).astype(io.METRIC_COLUMNS), path)
        cells.append(str(path))
    stages.collate(cells, str(res / "metrics.parquet"))
    paper = PAPER_REFERENCE
    # tables that need extra collated inputs (detection, ...) cannot be fabricated here
    tables = [t for t in TABLES.names() if not table_inputs(t)]
    for t in tables:
        out = {k: str(res / f"tables/{t}.{k}") for k in ("md", "tex", "html")}
        stages.render_table(t, str(res / "metrics.parquet"), out, CONFIG, str(paper))
    lac_curve(root / figures.cell_file(CONFIG, CONFIG["figures"]["fig2"], defense="lac", file="lac_curve.parquet"))
    names = figures.figure_names(CONFIG)
    for name in names:
        inputs = {k: str(root / v) for k, v in figures.figure_inputs(name, CONFIG).items()}
        stages.render_figure(
            name, inputs, {k: str(res / f"figures/{name}.{k}") for k in ("png", "pdf", "json")}, CONFIG
        )
    index = res / "report" / "index.html"
    stages.render_report(str(ROOT / "workflow/notebooks/report.ipynb"), str(res), str(index))
    ctx = TableContext(pd.read_parquet(res / "metrics.parquet"), CONFIG, PaperReference.load(paper))
    captions = [b.caption for t in tables for b in TABLES.get(t)(ctx)]
    return {"root": root, "index": index, "captions": captions, "figures": names}


def _chromium(*args, timeout=120):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", *args]
    return subprocess.run(cmd, capture_output=True, timeout=timeout)


def test_every_table_caption_and_figure_is_in_the_dom(report):
    index = report["index"]
    assert index.is_file() and not list(index.parent.glob("*.tmp*"))
    assert (index.parent / "report.ipynb").is_file()  # the executed notebook beside it
    out = _chromium("--dump-dom", index.as_uri())
    assert out.returncode == 0, out.stderr[-2000:]
    dom = _Dom()
    dom.feed(out.stdout.decode("utf-8"))
    shown = {" ".join(c.split()) for c in dom.captions}
    assert len(report["captions"]) >= 7  # tables 1, 2, 3, 8, 11 (+ the full-precision and 8b blocks)
    for caption in report["captions"]:
        assert " ".join(html.unescape(caption).split()) in shown, caption
    # one embedded PNG per figure, none of them blank, and no input code shown
    pngs = [s for s in dom.images if s.startswith("data:image/png;base64,")]
    assert len(pngs) == len(report["figures"]) == 4
    for src in pngs:
        img = mpimg.imread(_io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert img.shape[0] > 100 and float(img[..., :3].std()) > 0.02
    text = out.stdout.decode("utf-8")
    assert "import pandas" not in text and "def natural" not in text
    assert "not yet produced" in text and "(paper " in text


def test_the_page_renders_non_blank(report, tmp_path):
    shot = tmp_path / "shot.png"
    out = _chromium(f"--screenshot={shot}", "--window-size=1200,2400", report["index"].as_uri())
    assert out.returncode == 0 and shot.is_file(), out.stderr[-2000:]
    img = mpimg.imread(shot)
    assert float(img[..., :3].std()) > 0.05  # text, tables and figures, not an empty page
