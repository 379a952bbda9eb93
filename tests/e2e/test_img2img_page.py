"""The generate page's image to image in Chromium: an uploaded input, a mask painted with a
mouse and with a finger, outpainting, live previews of an inpainting job, "Use as input", and
the server's errors next to their fields."""

import base64
import io
import uuid

import pytest
from PIL import Image

from tests.e2e.test_generate import log_in

pytestmark = pytest.mark.e2e


@pytest.fixture
def picture(tmp_path):
    """A 64x48 PNG: a blue left half, a red right half."""
    image = Image.new("RGB", (64, 48), (20, 40, 200))
    image.paste((220, 30, 30), (32, 0, 64, 48))
    path = tmp_path / "input.png"
    image.save(path)
    return path


def upload(page, path):
    page.set_input_files("#id_init_image", str(path))
    page.locator("#input-editor").wait_for()


def stage_box(page):
    """Where the mask canvas is in the viewport, once scrolled into it."""
    page.locator("#input-mask").scroll_into_view_if_needed()
    return page.locator("#input-mask").bounding_box()


def mask_pixels(page) -> Image.Image:
    """The mask the page would send, decoded."""
    url = page.evaluate("window.StudioInput.editor.maskCanvas().toDataURL('image/png')")
    return Image.open(io.BytesIO(_data(url))).convert("L")


def _data(url: str) -> bytes:
    return base64.b64decode(url.split(",", 1)[1])


def test_a_painted_mask_inpaints_with_live_previews_and_the_recipe_names_the_inputs(
    studio_server, celery_worker, page, alice, picture
):
    from generation.models import Job

    log_in(page, studio_server, "alice")
    upload(page, picture)
    assert page.input_value("#id_width") == "64" and page.input_value("#id_height") == "48"
    assert page.input_value("#id_strength") == "0.75"
    box = stage_box(page)
    # A horizontal stroke across the middle third of the picture.
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    mask = mask_pixels(page)
    assert mask.size == (64, 48)
    assert mask.getpixel((32, 24)) == 255 and mask.getpixel((2, 2)) == 0
    assert set(mask.getdata()) == {0, 255}  # black and white, no grey rim
    assert "mask: painted" in page.inner_text("#input-facts")

    page.fill("#id_prompt", "a yellow triangle")
    page.fill("#id_steps", "12")
    page.evaluate("""() => {
        window.drawn = [];
        const img = document.getElementById("preview");
        new MutationObserver(() => window.drawn.push(img.src))
            .observe(img, {attributes: true, attributeFilter: ["src"]});
    }""")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_selector("#results img", timeout=120_000)
    previews = {src for src in page.evaluate("window.drawn") if src.startswith("data:image/")}
    assert len(previews) >= 3
    job = Job.objects.get(owner=alice)
    assert job.status == "succeeded"
    assert job.recipe["init_image"]["width"] == 64 and job.recipe["init_image"]["height"] == 48
    assert len(job.recipe["mask"]["sha256"]) == 64
    assert job.recipe["strength"] == 0.75
    assert job.total_steps == 9  # int(12 * 0.75) steps run

    # "Use as input" on the result puts it in the input area, the form as it was.
    page.get_by_role("link", name="Use as input").first.click()
    page.wait_for_function(INPUT_IS, arg="Input 64×48 px · mask: none")
    assert page.input_value("#id_prompt") == "a yellow triangle"

    # The image's page shows what it was made from, and brings it back as an input.
    output = job.outputs.get()
    page.goto(studio_server.url + output.get_page_url())
    made_from = page.locator(".made-from")
    assert made_from.get_by_alt_text("The input image it was made from").is_visible()
    assert made_from.get_by_alt_text("The mask: white was repainted").is_visible()
    assert "Strength 0.75" in made_from.inner_text()
    page.get_by_role("link", name="Use as input").click()
    page.wait_for_function(INPUT_IS, arg="Input 64×48 px · mask: none")
    assert page.url.endswith(f"/generate/?input_image={output.pk}")


INPUT_IS = "(text) => document.getElementById('input-facts').textContent.startsWith(text)"


def test_a_dropped_file_becomes_the_input_and_a_dropped_non_image_is_named(
    studio_server, page, alice, picture
):
    log_in(page, studio_server, "alice")
    drop = """([name, type, b64]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], name, {type}));
        const zone = document.querySelector(".dropzone");
        for (const kind of ["dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(kind, {dataTransfer: data, bubbles: true,
                                                    cancelable: true}));
        }
    }"""
    page.evaluate(drop, ["notes.txt", "text/plain", base64.b64encode(b"hello").decode()])
    page.wait_for_function(
        "document.querySelector('[data-error-for=\"init_image\"]').innerText"
        ".includes('not an image')")
    page.evaluate(drop, ["in.png", "image/png", base64.b64encode(picture.read_bytes()).decode()])
    page.wait_for_function(INPUT_IS, arg="Input 64×48 px · mask: none")
    assert page.inner_text('[data-error-for="init_image"]') == ""
    assert page.input_value("#id_width") == "64" and page.input_value("#id_height") == "48"
    page.get_by_role("button", name="Remove the image").click()
    assert page.locator("#input-editor").is_hidden()
    assert page.locator("#id_strength").is_disabled()  # no input image: not sent


def test_a_finger_paints_the_mask_at_phone_width(studio_server, browser, alice, picture):
    from generation.models import Job

    context = browser.new_context(viewport={"width": 375, "height": 740}, has_touch=True,
                                  is_mobile=True, device_scale_factor=2)
    page = context.new_page()
    page.set_default_timeout(15000)
    log_in(page, studio_server, "alice")
    upload(page, picture)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    box = stage_box(page)
    assert box["width"] > 200  # big enough to paint on with a finger
    scrolled = page.evaluate("window.scrollY")
    # A real touch drag (the browser makes the pointer events): top left corner, downwards.
    cdp = context.new_cdp_session(page)
    x = box["x"] + box["width"] * 0.1
    points = [(x, box["y"] + box["height"] * f) for f in (0.1, 0.3, 0.5, 0.7, 0.9)]
    for kind, (px, py) in [("touchStart", points[0]), *[("touchMove", p) for p in points[1:]]]:
        cdp.send("Input.dispatchTouchEvent",
                 {"type": kind, "touchPoints": [{"x": px, "y": py}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    assert page.evaluate("window.scrollY") == scrolled  # the finger painted, not scrolled
    mask = mask_pixels(page)
    assert mask.getpixel((6, 24)) == 255 and mask.getpixel((60, 24)) == 0
    page.get_by_role("button", name="Undo").click()
    assert mask_pixels(page).getextrema() == (0, 0)
    cdp.send("Input.dispatchTouchEvent",
             {"type": "touchStart", "touchPoints": [{"x": points[2][0], "y": points[2][1]}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    page.get_by_role("button", name="Invert").click()
    inverted = mask_pixels(page)
    assert inverted.getpixel((6, 24)) == 0 and inverted.getpixel((60, 24)) == 255

    page.fill("#id_prompt", "a red circle")
    page.fill("#id_steps", "4")
    page.locator("#generate-button").click()
    page.locator("#cancel-button").wait_for()
    job = Job.objects.get(owner=alice)
    assert job.recipe["mask"] is not None and job.recipe["init_image"]["width"] == 64
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    context.close()


def test_outpainting_extends_the_input_and_masks_the_new_area(
    studio_server, page, alice, picture
):
    from generation.models import Job

    log_in(page, studio_server, "alice")
    upload(page, picture)
    page.get_by_text("Extend the canvas").click()
    page.fill("#extend-by", "16")
    page.locator("#extend-by").dispatch_event("change")
    page.get_by_label("Right").check()
    page.get_by_label("Top").check()
    assert page.inner_text("#input-facts").startswith("Input 80×64 px")
    assert page.input_value("#id_width") == "80" and page.input_value("#id_height") == "64"
    mask = mask_pixels(page)
    assert mask.size == (80, 64)
    assert mask.getpixel((70, 40)) == 255 and mask.getpixel((10, 5)) == 255  # new area
    assert mask.getpixel((10, 40)) == 0  # the picture itself is kept
    padded = Image.open(io.BytesIO(_data(page.evaluate(
        "window.StudioInput.editor.pictureDataURL()")))).convert("RGB")
    assert padded.size == (80, 64)
    assert padded.getpixel((75, 40)) == (220, 30, 30)  # the right edge's colour, stretched
    assert padded.getpixel((10, 2)) == (20, 40, 200)

    page.fill("#id_prompt", "a red circle")
    page.fill("#id_steps", "4")
    page.get_by_role("button", name="Generate").click()
    page.locator("#cancel-button").wait_for()
    recipe = Job.objects.get(owner=alice).recipe
    assert recipe["init_image"]["width"] == 80 and recipe["init_image"]["height"] == 64
    assert recipe["mask"] is not None and (recipe["width"], recipe["height"]) == (80, 64)


def test_server_errors_show_next_to_the_image_fields(studio_server, page, alice, picture):
    from generation.models import Job

    log_in(page, studio_server, "alice")
    upload(page, picture)
    page.fill("#id_prompt", "a red circle")
    page.fill("#id_steps", "4")
    page.eval_on_selector("#id_strength", """(slider) => {
        slider.value = "0.1";  // int(4 * 0.1) = 0 steps: cannot run
        slider.dispatchEvent(new Event("input", {bubbles: true}));
    }""")
    assert page.inner_text("#id_strength_value") == "0.10"
    page.get_by_role("button", name="Generate").click()
    error = page.locator('[data-error-for="strength"]')
    error.wait_for()
    assert "= 0 steps" in error.inner_text()
    # A mask that is not the picture's size is refused by the page, naming the rule.
    other = Image.new("L", (32, 32), 255)
    buffer = io.BytesIO()
    other.save(buffer, format="PNG")
    page.set_input_files("#id_mask", files=[{"name": "mask.png", "mimeType": "image/png",
                                             "buffer": buffer.getvalue()}])
    # The page reads the file asynchronously: wait for its answer.
    page.wait_for_function(
        "document.querySelector('[data-error-for=\"mask\"]').innerText"
        ".includes(\"exactly the picture's size\")")
    assert not Job.objects.exists()


def test_use_as_input_names_an_image_that_is_gone(studio_server, page, alice):
    log_in(page, studio_server, "alice")
    page.goto(f"{studio_server.url}/generate/?input_image={uuid.uuid4()}")
    error = page.locator('[data-error-for="init_image"]')
    error.wait_for()
    assert "deleted, or you may not see it" in error.inner_text()
    assert page.locator("#input-editor").is_hidden()
