"""The review page in a real browser: Debian's chromium + chromium-driver, headless, driven by
Selenium, against a real `edgecam-train serve --run` (embeddings and Grad-CAM from a real run).

Log in, filter, relabel one sample with the keyboard, accept a group, reject one, and see each
change in the review database; screenshots of the grid (desktop and phone) and of the
explanation view are saved (``$EDGECAM_TEST_ARTIFACTS`` or the test's tmp folder) and printed.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the [dev] extra")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PASSWORD = "browser test password"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@pytest.fixture
def browser(tmp_path: Path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install, see .ci/run)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument("--window-size=1280,1000")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("EDGECAM_TEST_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _digit(digits_png: Path, row: int, col: int) -> np.ndarray:
    import cv2

    grid = cv2.imread(str(digits_png), cv2.IMREAD_GRAYSCALE)
    cell = grid[row * 20 : row * 20 + 20, col * 20 : col * 20 + 20]
    return cv2.resize(cell, (80, 80), interpolation=cv2.INTER_CUBIC)


def _db(server) -> sqlite3.Connection:
    return sqlite3.connect(Path(server.inbox) / "review.sqlite")


def _state(server, key: str) -> tuple | None:
    with _db(server) as conn:
        return conn.execute(
            "SELECT action, label, reviewer, via FROM current WHERE key = ?", (key,)
        ).fetchone()


def _wait(driver, predicate, what: str, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: predicate(d), message=f"waiting for {what}"
    )


def _shot(driver, artifacts: Path, name: str) -> Path:
    path = artifacts / name
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    assert path.stat().st_size > 10_000
    return path


def test_review_page_in_chromium(
    browser, artifacts, tiny_digits_run, digits_png, ingest_server_factory, put_field_sample,
    wait_until,
) -> None:  # fmt: skip
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    from training.review.users import add_reviewer

    server = ingest_server_factory(args=("--run", str(tiny_digits_run)))
    inbox = Path(server.inbox)
    burst = _digit(digits_png, 15, 70)  # a "3": three frames of one moment (JPEG qualities)
    keys = {"burst": [put_field_sample(inbox, burst, [("3", 0.55), ("5", 0.3)], quality=q,
                                       device="pi-a", camera="gate") for q in (95, 90, 85)]}  # fmt: skip
    keys["pi-b"] = [
        put_field_sample(inbox, _digit(digits_png, row, 80), [(str(row // 5), 0.5), ("1", 0.2)],
                         device="pi-b", camera=cam, policy="small_margin")
        for row, cam in ((2, "yard"), (22, "yard"), (42, "porch"))
    ]  # fmt: skip
    keys["pi-a"] = [
        put_field_sample(inbox, _digit(digits_png, row, 90), [(str(row // 5), 0.4), ("7", 0.3)],
                         device="pi-a", camera="gate")
        for row in (7, 31, 47)
    ]  # fmt: skip
    add_reviewer(server.workdir / "edgecam-reviewers.txt", "ana", PASSWORD)
    server.start()

    def embedded() -> bool:  # the server's indexer thread embeds with the run's model
        if not (inbox / "review.sqlite").exists():
            return False
        with _db(server) as conn:
            n, done = conn.execute("SELECT COUNT(*), COUNT(embedding) FROM samples").fetchone()
        return n == 9 and done == 9

    d = browser
    d.get(f"{server.url}/review/")
    assert "/review/login" in d.current_url  # no session: the login page
    d.find_element(By.ID, "name").send_keys("ana")
    d.find_element(By.ID, "password").send_keys(PASSWORD)
    d.find_element(By.ID, "login").click()
    _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".card"), "the grid")
    wait_until(embedded, timeout=90, what="embeddings of every sample")
    d.refresh()
    _wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == 9, "9 cards")
    assert "by the model's embeddings" in d.page_source
    _shot(d, artifacts, "review-grid.png")

    # filter: one device
    Select(d.find_element(By.ID, "f-device")).select_by_value("pi-b")
    d.find_element(By.ID, "apply-filters").click()
    _wait(d, lambda d: "device=pi-b" in d.current_url, "the filtered grid")
    cards = d.find_elements(By.CSS_SELECTOR, ".card")
    assert sorted(c.get_attribute("data-key") for c in cards) == sorted(keys["pi-b"])

    # relabel one with the keyboard: the first pending card has the focus; l, type, Enter
    first = d.switch_to.active_element
    target = first.get_attribute("data-key")
    assert target in keys["pi-b"]
    ActionChains(d).send_keys("l").perform()
    assert d.switch_to.active_element.get_attribute("id") == "label-input"
    ActionChains(d).send_keys("8", Keys.ENTER).perform()
    _wait(d, lambda d: _state(server, target) is not None, "the relabel in the database")
    assert _state(server, target) == ("relabel", "8", "ana", "keyboard")
    card = d.find_element(By.CSS_SELECTOR, f'.card[data-key="{target}"]')
    assert card.get_attribute("data-status") == "accepted"
    assert "accepted: 8" in card.text

    # accept a group: the three frames of the burst are one group
    d.get(f"{server.url}/review/?device=pi-a")
    group = _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "section.group"), "a group")[0]
    members = [c.get_attribute("data-key") for c in group.find_elements(By.CSS_SELECTOR, ".card")]
    assert set(keys["burst"]) <= set(members)
    group.find_element(By.CSS_SELECTOR, ".group-accept").click()
    _wait(d, lambda d: all(_state(server, k) for k in members), "the group in the database")
    for k in members:
        action, label, reviewer, via = _state(server, k)
        assert (action, reviewer, via) == ("accept", "ana", "group") and label
    assert {_state(server, k)[1] for k in keys["burst"]} == {"3"}

    # reject one: focus a pending card, r
    pending = next(k for k in keys["pi-a"] if k not in members)
    card = d.find_element(By.CSS_SELECTOR, f'.card[data-key="{pending}"]')
    d.execute_script("arguments[0].focus()", card)
    ActionChains(d).send_keys("r").perform()
    _wait(d, lambda d: _state(server, pending) is not None, "the rejection in the database")
    assert _state(server, pending) == ("reject", None, "ana", "keyboard")
    _wait(d, lambda d: card.get_attribute("data-status") == "rejected", "the rejected card")

    # a near-duplicate of a reviewed sample is marked; the pending grid shows what is left
    d.get(f"{server.url}/review/?status=all")
    _wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == 9, "all 9 cards")
    near = d.find_elements(By.CSS_SELECTOR, ".card .near")
    assert near and all("reviewed as" in n.text for n in near)
    d.set_window_size(390, 844)  # a phone
    d.get(f"{server.url}/review/?status=all")
    _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".card"), "the phone grid")
    width = d.execute_script("return document.documentElement.scrollWidth")
    assert width <= 400  # nothing wider than the screen
    _shot(d, artifacts, "review-grid-phone.png")
    d.set_window_size(1280, 1000)

    # the explanation view: where the model looked (Grad-CAM from the run's Keras model)
    d.get(f"{server.url}/review/sample/{keys['burst'][0]}")
    _wait(
        d,
        lambda d: d.execute_script(
            "const i = document.getElementById('explain-image');"
            "return i && i.complete && i.naturalWidth > 0 ? i.naturalWidth : 0;"
        ),
        "the Grad-CAM overlay",
        timeout=60,
    )
    assert d.execute_script("return document.getElementById('explain-image').naturalWidth") >= 320
    assert "Grad-CAM" in d.page_source and "group" in d.page_source
    _shot(d, artifacts, "review-explain.png")
