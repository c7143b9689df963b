# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""The Gradio app in a real headless Chromium (Debian `chromium`, driven by Playwright): Generate streams previews
into the page, Stop ends a long run and keeps its images. Screenshots go to `$DDPM_ARTIFACTS_DIR` (default
`artifacts/`): `app_final.png` at the end and `app_midrun.png` during a run (copy it to `docs/app_screenshot.png`).

Tiny random pipelines saved to a temporary folder stand in for trained weights (`DDPM_APP_TEST_MODEL` may name
another model, e.g. `bundled:latent`, for the screenshots)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
from conftest import require_or_skip

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
require_or_skip(path=CHROMIUM, install="install Debian chromium (apt-get install -y chromium) for the browser test")
sync_api = require_or_skip(module="playwright.sync_api", install="pip install -e '.[test]'")

from ddpm_plugin import DDPMUNet2DModel, GaussianDDPMScheduler, PixelDDPMPipeline  # noqa: E402

# records every src that the img of a preview element shows (the stream may be faster than polling)
WATCH_SRCS = """(id) => {
  window.__srcs = window.__srcs || {};
  const seen = (window.__srcs[id] = []);
  const root = document.getElementById(id);
  const record = () => root.querySelectorAll('img').forEach((img) => {
    if (img.src && seen[seen.length - 1] !== img.src) seen.push(img.src);
  });
  new MutationObserver(record).observe(root, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
  record();
}"""


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("DDPM_ARTIFACTS_DIR", "artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """The app on a free port with a tiny random pixel model of T = 1000 (a 1000-step run lasts long enough to stop)."""
    model = os.environ.get("DDPM_APP_TEST_MODEL")
    if not model:
        torch.manual_seed(0)
        unet = DDPMUNet2DModel(
            sample_size=8,
            in_channels=1,
            model_channels=16,
            channel_mult=(1, 2),
            layers_per_block=1,
            attention_resolutions=(4,),
            norm_num_groups=4,
        )
        model = str(tmp_path_factory.mktemp("browser_models") / "pixel")
        PixelDDPMPipeline(unet=unet, scheduler=GaussianDDPMScheduler(num_train_timesteps=1000)).save_pretrained(model)
    import app

    demo = app.build_demo(default_model=model)
    port = free_port()
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, app_url):
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.set_default_timeout(120_000)  # generous: two shared cores may be busy with other work
    page.goto(app_url, wait_until="domcontentloaded")
    page.locator("#generate").wait_for(state="visible")
    page.locator("#model_info", has_text="DDPMPipeline").wait_for()  # the page's model was loaded
    yield page
    page.close()


def set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def current_step(page) -> int:
    """The step of a running sample from the status line ("Step k / n · ..."), 0 before the first preview."""
    text = page.locator("#status").inner_text()
    return int(text.split("Step ")[1].split(" /")[0]) if "Step " in text else 0


def status_state(page) -> str | None:
    return page.locator("#status .ddpm-status").get_attribute("data-state")


def test_generate_streams_previews_then_final_grid(page):
    set_slider(page, "steps", 40)
    set_slider(page, "batch_size", 4)
    page.evaluate(WATCH_SRCS, "xt")
    page.evaluate(WATCH_SRCS, "x0")
    page.locator("#generate").click()
    page.locator('#status .ddpm-status[data-state="done"]').wait_for()
    page.locator("#final img").wait_for(state="visible")
    xt_srcs = page.evaluate("window.__srcs.xt")
    x0_srcs = page.evaluate("window.__srcs.x0")
    # at least three different images: the preview changed at least twice
    assert len(set(xt_srcs)) >= 3, xt_srcs
    # x0_hat changes too (a latent model decodes it within a time budget, so at least the first and the last)
    assert len(set(x0_srcs)) >= 2, x0_srcs
    assert "Done: 40 steps" in page.locator("#status").inner_text()
    assert page.locator("#generate").is_enabled()
    assert page.locator("#trajectory img").is_visible()
    page.screenshot(path=str(artifacts_dir() / "app_final.png"), full_page=True)


def test_stop_ends_a_long_run(page):
    set_slider(page, "steps", 1000)
    set_slider(page, "batch_size", 16)
    page.evaluate(WATCH_SRCS, "xt")
    page.locator("#generate").click()
    # let a quarter of the run go by (digits begin to show), take the mid-run screenshot, then stop
    deadline = time.monotonic() + 120
    while current_step(page) < 250 and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert len(set(page.evaluate("window.__srcs.xt"))) >= 3
    assert status_state(page) == "running"
    assert not page.locator("#generate").is_enabled()
    midrun = artifacts_dir() / "app_midrun.png"
    page.screenshot(path=str(midrun), full_page=True)
    page.locator("#stop").click()
    page.locator('#status .ddpm-status[data-state="stopped"]').wait_for()
    text = page.locator("#status").inner_text()
    stopped_at = int(text.split("Stopped at step ")[1].split(" /")[0])
    assert 250 <= stopped_at < 1000
    page.wait_for_function("() => !document.querySelector('#generate').disabled")
    page.locator("#final img").wait_for(state="visible", timeout=15_000)  # what was made is kept (the image may
    # arrive a moment after the button is enabled again on a loaded machine)
    assert not page.locator("#stop").is_enabled()
    if os.environ.get("DDPM_APP_SCREENSHOT_TO_DOCS"):
        shutil.copyfile(midrun, Path(__file__).resolve().parents[1] / "docs" / "app_screenshot.png")
