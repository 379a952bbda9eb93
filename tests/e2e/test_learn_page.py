"""The /learn/ page in Chromium: its panels, the model picker, the forward process computed
by a real worker, and the picture grids run as ordinary jobs on a real worker with the demo
model. Without a worker the forward process's message waits in the run's own queue, which
`celery_queue` empties after the test."""

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.generation.test_learn import sd_schedule  # noqa: F401  (a fixture)

from .conftest import signed_in

pytestmark = pytest.mark.e2e

# Where the page's screenshots go when STUDIO_SHOTS names a folder (docs and reviews).
SHOTS = os.environ.get("STUDIO_SHOTS")


def open_learn(browser, server, user, query="", viewport=None):
    context = signed_in(browser, server, user)
    page = context.new_page()
    if viewport:
        page.set_viewport_size(viewport)
    page.set_default_timeout(15000)
    page.goto(f"{server.url}/learn/{query}")
    page.wait_for_load_state("load")
    return context, page


def shoot(page, name):
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=f"{SHOTS}/learn-{name}.png", full_page=True)


def model_line(page):
    return page.locator('[data-chart="alpha-bar"] polyline.s-model').get_attribute("points")


def test_every_panel_renders_and_the_model_picker_redraws_the_schedule(
    studio_server, browser, alice, sd_schedule, celery_queue  # noqa: F811
):
    context, page = open_learn(browser, studio_server, alice)
    for panel in ("The schedule", "The forward process", "Guidance", "Samplers and steps",
                  "The denoising path"):
        expect(page.get_by_role("heading", name=panel)).to_be_visible()
    assert page.locator(".learn-chart svg").count() == 2
    assert page.locator("#guidance .learn-cell").count() == 4
    assert page.locator("#samplers .learn-cell").count() == 9
    expect(page.locator("#guidance .learn-measured tbody tr")).to_have_count(4)
    expect(page.locator("#samplers .learn-measured tbody tr")).to_have_count(9)
    expect(page.locator("#path-empty")).to_be_visible()
    # No worker here: the forward process says it waits in the queue.
    expect(page.locator("#forward-status")).to_contain_text("Waiting in the queue")
    expect(page.locator("#forward-strip li")).to_have_count(10)
    expect(page.locator("#schedule-legend")).to_contain_text("% of steps below 10% noise")
    # Hovering the chart reads out every schedule's values at that t.
    page.locator('[data-chart="snr"] rect.band').nth(25).hover()
    expect(page.locator("#schedule-readout")).to_contain_text("t = ")
    expect(page.locator("#schedule-readout")).to_contain_text("SNR")
    demo_line = model_line(page)
    page.select_option("#learn-model", sd_schedule)
    page.wait_for_url(f"**model={sd_schedule}**")
    expect(page.locator("#schedule-legend")).to_contain_text(sd_schedule)
    assert model_line(page) != demo_line
    expect(page.locator("#schedule .help")).to_contain_text("scaled_linear")
    context.close()


def test_the_page_fits_a_phone(studio_server, browser, alice, celery_queue):
    context, page = open_learn(browser, studio_server, alice,
                               viewport={"width": 375, "height": 812})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    expect(page.locator(".learn-chart svg").first).to_be_visible()
    expect(page.locator("#forward-slider")).to_be_visible()
    shoot(page, "phone")
    context.close()


def test_the_t_slider_dissolves_the_demo_circle_into_noise_and_an_upload_follows(
    studio_server, celery_worker, browser, alice, tmp_path
):
    """A new user with only the demo model: the panel asks a real worker for the frames as
    the page opens, and the slider and the strip show them."""
    context, page = open_learn(browser, studio_server, alice)
    expect(page.locator("#forward-source")).to_have_value("demo")
    slider, frame = page.locator("#forward-slider"), page.locator("#forward-frame")
    caption = page.locator("#forward-caption")
    expect(slider).to_be_enabled(timeout=120_000)
    expect(caption).to_contain_text("t = 0 of 1000")
    clean = frame.get_attribute("src")
    assert clean.startswith("data:image/webp;base64,")
    slider.fill("23")
    expect(caption).to_contain_text("t = 511 of 1000")
    middle = frame.get_attribute("src")
    slider.fill(slider.get_attribute("max"))
    expect(caption).to_contain_text("t = 999 of 1000 · ᾱ_t = ")
    expect(caption).to_contain_text("noise 100")
    assert len({clean, middle, frame.get_attribute("src")}) == 3
    strip = page.locator("#forward-strip img")
    expect(strip).to_have_count(10)
    for k in range(10):
        expect(strip.nth(k)).to_have_attribute("src", re.compile(r"^data:image/webp;base64,"))
    expect(page.locator("#forward-strip span")).to_have_text(
        [f"t = {111 * k}" for k in range(10)])
    strip.nth(5).click()
    expect(caption).to_contain_text("t = 555 of 1000")
    assert frame.get_attribute("src") == strip.nth(5).get_attribute("src")
    shoot(page, "forward")

    # An upload becomes the picker's choice and gets frames of its own.
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (80, 60), (250, 250, 250))
    ImageDraw.Draw(picture).rectangle((20, 10, 60, 50), fill=(20, 160, 60))
    picture.save(tmp_path / "square.png")
    circle = strip.first.get_attribute("src")
    page.set_input_files("#forward-upload", str(tmp_path / "square.png"))
    expect(page.locator("#forward-source")).to_have_value(re.compile(r"^upload:[0-9a-f]{64}$"))
    expect(strip.first).not_to_have_attribute("src", circle, timeout=60_000)
    expect(page.locator("#forward-status")).to_contain_text("Computed at 64×64")
    context.close()


def test_the_guidance_row_makes_four_private_images_and_their_denoising_path(
    studio_server, celery_worker, browser, alice
):
    from gallery.models import Image, Visibility

    context, page = open_learn(browser, studio_server, alice)
    page.evaluate("""() => {
        window.previews = new Set();
        new MutationObserver((changes) => changes.forEach((c) => {
            if (c.target.src.startsWith("data:image/")) window.previews.add(c.target.src);
        })).observe(document.getElementById("guidance"),
                    {attributes: true, attributeFilter: ["src"], subtree: true});
    }""")
    page.fill("#guidance-seed", "7")
    page.fill("#guidance-steps", "8")
    page.get_by_role("button", name="Run the guidance row").click()
    done = page.locator("#guidance .learn-cell[data-done]")
    expect(done).to_have_count(4, timeout=180_000)
    for k in range(4):
        expect(done.nth(k).locator("img")).to_have_attribute("src", re.compile(r"/images/.*\.png$"))
        expect(done.nth(k).locator(".cell-status")).to_contain_text(" s")
    assert page.evaluate("window.previews.size") >= 4  # live steps, drawn as they came
    images = Image.objects.filter(owner=alice)
    assert sorted(i.output.recipe["guidance_scale"] for i in images) == [1, 3, 5, 7.5]
    assert {i.output.recipe["seed"] for i in images} == {7}
    assert {i.visibility for i in images} == {Visibility.PRIVATE}
    shoot(page, "desktop")
    # The new images' denoising paths: the slider steps through the stored frames.
    page.reload()
    frame = page.locator("#path-frame")
    first = frame.get_attribute("src")
    page.locator("#path-slider").fill(str(page.locator("#path-slider").get_attribute("max")))
    assert frame.get_attribute("src") != first
    expect(page.locator("#path-caption")).to_contain_text("of 8")
    assert page.locator(".learn-strip img").count() >= 3
    shoot(page, "path")
    context.close()


def test_the_sampler_grid_submits_in_turns_within_the_queue_limit(
    studio_server, celery_worker, browser, alice, settings
):
    settings.STUDIO_MAX_QUEUED_PER_USER = 2
    context, page = open_learn(browser, studio_server, alice)
    page.fill("#samplers-seed", "3")
    page.get_by_role("button", name="Run the grid").click()
    done = page.locator("#samplers .learn-cell[data-done]")
    expect(done).to_have_count(9, timeout=300_000)
    expect(page.locator("#samplers .learn-error")).to_have_text("")
    statuses = page.locator("#samplers .cell-status").all_inner_texts()
    assert all(" s" in text for text in statuses)
    shoot(page, "samplers")
    context.close()
