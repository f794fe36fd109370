"""The `dvc plots show` page renders every chart offline, summary first.

A throw-away git+DVC project gets the workspace's dvc.yaml, .dvc/config and .dvc/plots/ (the offline template),
the committed params.yaml, and tiny generated data for every plot dvc.yaml declares (written by the project's own
writers where it has them). `python -m dvc plots show` builds the page; headless Chromium, cut off from the
network, opens it and a probe appended to a copy of the page counts the Vega charts that drew an svg/canvas of
non-zero size and the images that loaded. A control page with DVC's default CDN script tags, in the same browser,
must draw none: that proves the probe sees blank charts and that the browser really was offline.

Chromium: /usr/bin/chromium when present; as root with apt-get (CI on a fresh machine), installed once; otherwise
the rendering tests skip with the reason.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.browser import debian_program
from support.params import ROOT, committed_params_text

pytestmark = pytest.mark.e2e

SUMMARY_PLOT = "metrics/summary/summary.csv"
EPOCHS = 3
CLASSES = ["Audi A4 2012", "BMW M3 2010", "Volvo XC90 2007"]
PROBE_ID = "plots-page-probe"
#: Appended to a copy of the page: polls until every Vega chart drew and every image loaded (or gives up), then
#: writes a JSON report into the DOM, which Chromium's --dump-dom prints (virtual time: idle polling is free).
#: Its first %s gets the ids of the Vega divs, read from the page's source by the test, since vega-embed replaces
#: each div's script when it draws.
PROBE = """
<script>
(function () {
  var ids = Array.from(document.querySelectorAll('body > div[id]')).map(function (d) { return d.id; });
  var vegaIds = %s;
  function drew(id) {
    var div = document.getElementById(id);
    return !!div && Array.from(div.querySelectorAll('svg, canvas')).some(function (g) {
      var r = g.getBoundingClientRect(); return r.width > 0 && r.height > 0;
    });
  }
  function report(tries) {
    var drawn = vegaIds.filter(drew);
    var images = Array.from(document.images);
    var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
    if ((drawn.length < vegaIds.length || loaded.length < images.length) && tries > 0) {
      setTimeout(function () { report(tries - 1); }, 250);
      return;
    }
    var pre = document.createElement('pre');
    pre.id = '%s';
    pre.textContent = JSON.stringify({order: ids, vega: vegaIds, drawn: drawn, images: images.length,
                                      loaded: loaded.length, vegaLoaded: typeof vegaEmbed === 'function'});
    document.body.appendChild(pre);
  }
  window.addEventListener('load', function () { report(40); });
})();
</script>
"""


# ----------------------------------------------------------------------------- chromium
@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary; installed with apt-get once when running as root on a machine without it."""
    return debian_program("chromium", "the plots page tests")


def _offline_prefix() -> list[str]:
    """`unshare -n` (an empty network namespace) when this process may create one; else nothing, and only the
    browser flags below keep it offline."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []


def page_body(html: str) -> str:
    """The page after its real </head> (the inlined libraries contain the string too, so: the last one)."""
    head, end_tag, body = html.rpartition("</head>")
    assert end_tag, "no </head>"
    return body


def declared_vega(html: str) -> list[str]:
    """Ids of the Vega charts the page declares (dvc_render writes `vegaEmbed('#<id>', spec)` in each div)."""
    return re.findall(r"vegaEmbed\('#([^']+)'", page_body(html))


def render(chromium: str, page: Path, tmp: Path) -> dict:
    """Open a probed copy of ``page`` (same folder, so relative image paths hold) offline; the probe's report."""
    probed = page.with_name(f"probe-{page.name}")
    html = page.read_text(encoding="utf-8")
    head, body_end, tail = html.rpartition("</body>")
    assert body_end, f"{page}: no </body>"
    probe = PROBE % (json.dumps(declared_vega(html)), PROBE_ID)
    probed.write_text(head + probe + body_end + tail, encoding="utf-8")
    profile = tmp / f"chromium-profile-{page.stem}"
    cmd = [*_offline_prefix(), chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
           "--virtual-time-budget=60000", "--dump-dom", probed.as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    found = re.search(rf'<pre id="{PROBE_ID}">(.*?)</pre>', result.stdout, re.S)
    assert found, f"no probe report (rc {result.returncode}): {result.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


# ----------------------------------------------------------------------------- the project
def _png(path: Path, color: tuple[int, int, int]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), color).save(path)


def fake_outputs(project: Path, params: dict) -> dict[str, int]:
    """Tiny data for every plot dvc.yaml declares; returns how many Vega data files and images it wrote."""
    import numpy as np

    from carbench.report.evaluate import write_confusion_csv
    from carbench.train.train_log import METRIC_KEYS, log_epoch, open_live, write_curves

    trained, experiments = list(params["dag"]["train"]), list(params["experiments"])
    history = [{key: (1.0 / (epoch + 2) if "loss" in key else 0.2 * (epoch + 1)) * (0.9 if "val" in key else 1.0)
                for key in METRIC_KEYS} for epoch in range(EPOCHS)]
    for name in trained:  # dvclive's per-epoch curves and the overlaid train/val curves, as train@ writes them
        live = open_live(project / "metrics" / "train" / name, [])
        for row in history:
            log_epoch(live, row)
        live.end()
        write_curves(project / "plots" / "curves", name, history)
    labels = np.array([0, 1, 2, 2])
    for name in experiments:  # evaluate@: confusion data and its two images
        out = project / "plots" / "eval" / name
        out.mkdir(parents=True)
        write_confusion_csv(labels, np.array([0, 2, 2, 1]), CLASSES, out / "confusion.csv")
        _png(out / "confusion.png", (200, 30, 30))
        _png(out / "misclassified.png", (30, 200, 30))
    summary = project / SUMMARY_PLOT
    summary.parent.mkdir(parents=True)
    rows = [f"{name},{0.1 + 0.05 * i:.3f},{0.08 + 0.05 * i:.3f}" for i, name in enumerate(experiments)]
    summary.write_text("experiment,top1,f1_macro\n" + "\n".join(rows) + "\n")
    for image in ("plots/summary/top1_f1.png", "plots/summary/val_top1.png", "plots/class_distribution.png",
                  "plots/crops_preview.png"):
        _png(project / image, (30, 30, 200))
    vega = len(trained) * (len(METRIC_KEYS) + 2) + len(experiments) + 1
    return {"vega": vega, "images": 2 * len(experiments) + 4}


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    """The venv's DVC in ``project``, with its site cache inside the project (nothing shared with other runs)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(project / ".dvc" / "site")}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True,
                          timeout=180, env=env)


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """`dvc plots show` in a throw-away project with the repository's plot declarations and template."""
    project = tmp_path_factory.mktemp("plots_page")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")
    (project / "params.yaml").write_text(committed_params_text())
    (project / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", project / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", project / ".dvc" / "plots")
    expected = fake_outputs(project, yaml.safe_load(committed_params_text()))
    declared = dvc(project, "plots", "show", "--json")
    assert declared.returncode == 0, declared.stderr
    errors = json.loads(declared.stdout).get("errors", [])
    assert not errors, f"dvc.yaml declares plots the fake project has no data for (extend fake_outputs): {errors}"
    shown = dvc(project, "plots", "show")
    assert shown.returncode == 0, shown.stderr
    page = project / "dvc_plots" / "index.html"
    assert page.is_file(), shown.stdout + shown.stderr
    return page, expected


# ----------------------------------------------------------------------------- tests


def test_page_loads_nothing_from_the_network(plots_page):
    page, expected = plots_page
    html = page.read_text(encoding="utf-8")
    remote = re.findall(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*["']?(?:https?:)?//[^"'\s>]+""",
                        html, re.I)
    assert not remote, f"the page loads from the network: {remote}"
    assert len(declared_vega(html)) == expected["vega"]
    assert len(re.findall(r"<img\b", page_body(html))) == expected["images"]


def test_every_chart_renders_offline_summary_first(plots_page, chromium, tmp_path):
    page, expected = plots_page
    seen = render(chromium, page, tmp_path)
    assert seen["vegaLoaded"], "vega-embed did not load"
    assert len(seen["vega"]) == expected["vega"], seen
    blank = sorted(set(seen["vega"]) - set(seen["drawn"]))
    assert not blank, f"{len(blank)} of {len(seen['vega'])} Vega charts stayed blank: {blank}"
    assert seen["images"] == expected["images"] and seen["loaded"] == seen["images"], seen
    from dvc_render.base import Renderer

    assert seen["order"][0] == Renderer.remove_special_chars(SUMMARY_PLOT), \
        f"the page starts with {seen['order'][:3]}, not the summary"
    # then the summary's images (the template moves them up from the end, where dvc_render puts images)
    assert sorted(seen["order"][1:3]) == ["plots_summary_top1_f1_png", "plots_summary_val_top1_png"], seen["order"]


def test_default_cdn_page_renders_blank_offline(plots_page, chromium, tmp_path):
    """Control: the same plots with DVC's default page (Vega from a CDN), in the same offline browser."""
    from dvc_render.html import PAGE_HTML

    page, expected = plots_page
    project = page.parent.parent
    default = tmp_path / "default.html"
    default.write_text(PAGE_HTML, encoding="utf-8")
    shown = dvc(project, "plots", "show", "--html-template", str(default), "-o", "dvc_plots_cdn")
    assert shown.returncode == 0, shown.stderr
    cdn = project / "dvc_plots_cdn" / "index.html"
    assert "cdn.jsdelivr.net" in cdn.read_text(encoding="utf-8")
    seen = render(chromium, cdn, tmp_path)
    assert not seen["vegaLoaded"], "the browser reached the CDN: it is not offline"
    assert len(seen["vega"]) == expected["vega"] and seen["drawn"] == [], seen
    assert seen["loaded"] == seen["images"] == expected["images"], seen
