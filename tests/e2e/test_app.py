"""`carbench app` in a real browser: Debian's Chromium, driven by Selenium through Debian's chromium-driver, opens
the page served on the models of a tiny demo project (reproduced up to a scratch CNN and a retrieval experiment),
uploads a real photo of ``$CARBENCH_REAL_DATA``'s stanford-cars-raw300 with its official box, and must show, for
every experiment, the top-5 that `carbench-predict` prints for the same photo and box; then a refused upload, the
nearest gallery crops and the test mistakes tab.

The browser is kept offline (a dead proxy; loopback is never proxied) and the page must have loaded nothing but from
the app itself. Skipped with the reason where Chromium or the real photos are absent.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import scipy.io as sio
from support.browser import debian_program
from support.params import REAL_DATA, REAL_DATA_ENV
from support.project import env, make_project, run, tiny_params

pytestmark = pytest.mark.e2e

RAW300 = REAL_DATA / "stanford-cars-raw300"
ADDRESS = re.compile(r"^carbench app: (\d+) experiments at (http://127\.0\.0\.1:\d+)/? ")
PREDICT_LINE = re.compile(r"^(\d+)\. (\d\.\d{4})  (.+?)(?:  \((.*)\))?$")
WAIT_S = 300
#: What the demo project reproduces: a scratch CNN and a retrieval experiment (which trains its embedder, a
#: transfer experiment): each kind of model, a third of the DAG's training time.
STAGES = ["evaluate@cnn_basic", "evaluate@knn_resnet50_k3"]
MODELS = ["cnn_basic", "knn_resnet50_k3", "tl_resnet50_finetune"]


def raw300_photo() -> tuple[Path, str]:
    """The first test photo of raw300 and its official box as ``x1,y1,x2,y2``."""
    if not RAW300.is_dir():
        pytest.skip(f"{RAW300} is absent (set {REAL_DATA_ENV} to the folder of the real photos)")
    first = sio.loadmat(RAW300 / "cars_test_annos_withlabels.mat", squeeze_me=True)["annotations"][0]
    box = ",".join(str(int(first[f])) for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
    return RAW300 / "cars_test" / str(first["fname"]), box


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny copy of the project, reproduced up to :data:`STAGES`."""
    root = tmp_path_factory.mktemp("app_e2e")
    environ = env(root / "torch_home")
    project = make_project(root / "project", tiny_params())
    run(["dvc", "repro", *STAGES], project, environ)
    assert sorted(p.name for p in (project / "models").iterdir() if p.is_dir()) == MODELS
    return project, environ


@pytest.fixture(scope="module")
def app(demo):
    """`carbench app` started in the project with its defaults: (address, experiments loaded)."""
    project, environ = demo
    command = Path(sys.executable).with_name("carbench")
    proc = subprocess.Popen([str(command), "app", "--port", "0", "--device", "cpu"], cwd=project, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        found = ADDRESS.match(line)
        assert found, f"no address line: {line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        yield found.group(2), int(found.group(1))
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def browser():
    chromium = debian_program("chromium", "the app's browser test")
    driver_path = debian_program("chromium-driver", "the app's browser test")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--proxy-server=127.0.0.1:9", "--window-size=1400,2000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def predict_lines(project: Path, environ: dict, photo: Path, box: str, name: str) -> list[tuple[str, str]]:
    """`carbench-predict`'s top-5 for one experiment: (class, probability as printed)."""
    command = Path(sys.executable).with_name("carbench-predict")
    out = run([str(command), str(photo), "--experiment", name, "--box", box], project, environ).stdout
    rows = [PREDICT_LINE.match(line) for line in out.splitlines()]
    return [(m.group(3), m.group(2)) for m in rows if m]


def shown_top5(driver) -> dict[str, list[tuple[str, str]]]:
    """The page's top-5 lines by experiment, in rank order."""
    from selenium.webdriver.common.by import By

    shown: dict[str, list[tuple[str, str]]] = {}
    for item in driver.find_elements(By.CSS_SELECTOR, "#top5 li[data-rank]"):
        shown.setdefault(item.get_attribute("data-experiment"), []).append(
            (item.get_attribute("data-class"), item.get_attribute("data-probability")))
    return shown


def status_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "status").text.strip()


def upload(driver, photo: Path, box: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(photo))
    field = driver.find_element(By.CSS_SELECTOR, "#box textarea, #box input")
    field.clear()
    field.send_keys(box)
    driver.find_element(By.ID, "predict").click()


def test_the_page_shows_carbench_predicts_top5_for_a_real_photo(demo, app, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    project, environ = demo
    address, count = app
    photo, box = raw300_photo()
    browser.get(address)
    wait = WebDriverWait(browser, WAIT_S)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))
    upload(browser, photo, box)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#top5 li[data-rank]")) == 5 * count
               or status_text(d).startswith("error"))
    assert status_text(browser) == f"{photo.name}: top-5 of {count} experiments"
    shown = shown_top5(browser)
    assert sorted(shown) == MODELS and count == len(MODELS)
    for name, rows in shown.items():
        assert rows == predict_lines(project, environ, photo, box, name), name
    # each retrieval experiment shows its nearest gallery crops (at least 8)
    for gallery in browser.find_elements(By.CSS_SELECTOR, "[id^=nearest-]"):
        wait.until(lambda d: len(gallery.find_elements(By.TAG_NAME, "img")) >= 8)
    assert len(browser.find_elements(By.CSS_SELECTOR, "[id^=nearest-]")) == 1

    # a file that is no photo, in a fresh page: one line in the page
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a picture")
    browser.get(address)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))
    upload(browser, notes, "")
    wait.until(lambda d: status_text(d).startswith("error"))
    assert status_text(browser) == ("error: notes.jpg is not a readable image (no known image format); "
                                    "pass a photo (JPEG, PNG, ...)")

    # the page loaded nothing but from the app itself
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    elsewhere = [u for u in loaded if not u.startswith((address, "data:", "blob:"))]
    assert not elsewhere, elsewhere


def test_the_mistakes_tab_shows_an_experiments_test_mistakes(demo, app, browser):
    import csv

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    project, _ = demo
    address, _ = app
    browser.get(address)
    wait = WebDriverWait(browser, WAIT_S)
    tab = wait.until(lambda d: d.find_elements(By.XPATH, "//button[@role='tab'][contains(., 'Test mistakes')]"))
    tab[0].click()
    line = wait.until(lambda d: (d.find_element(By.ID, "mistakes-line").text.strip() or None))
    name = line.split(":")[0]
    assert name == MODELS[0]            # the first experiment, which evaluate@ gave its predictions.csv
    with open(project / "metrics" / "eval" / name / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    wrong = sum(row["correct"] == "0" for row in rows)
    assert line.startswith(f"{name}: {wrong} of {len(rows)} test photos wrong"), line
    shown = min(wrong, 8)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#mistakes img")) >= 3 * shown)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#mistakes img")) == 3 * shown
