import re

import pytest
from django.conf import settings

from tests.conftest import PASSWORD

pytestmark = pytest.mark.e2e


def log_in(page, server, username):
    page.goto(server.url + "/accounts/login/?next=/generate/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_selector("#generate-form")
    page.wait_for_load_state("load")  # the page's scripts have run: its handlers are on


def test_generate_with_the_demo_model_and_watch_it_denoise(
    studio_server, celery_worker, page, alice
):
    log_in(page, studio_server, "alice")
    assert page.locator("#id_model").input_value() == settings.STUDIO_DEMO_MODEL_NAME
    page.fill("#id_prompt", "a yellow triangle on a blue background")
    page.fill("#id_steps", "12")
    # Record every preview the page draws, as the browser sees it.
    page.evaluate("""() => {
        window.drawn = [];
        const img = document.getElementById("preview");
        new MutationObserver(() => window.drawn.push(img.src))
            .observe(img, {attributes: true, attributeFilter: ["src"]});
    }""")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_selector("#results img", timeout=120_000)
    drawn = page.evaluate("window.drawn")
    previews = {src for src in drawn if src.startswith("data:image/")}
    assert len(previews) >= 3
    assert page.locator("#status-text").inner_text().startswith("Done — seed ")
    final = page.locator("#results img").first
    assert page.evaluate("(img) => img.naturalWidth", final.element_handle()) == 64
    page.locator("#results a").first.click()
    page.wait_for_selector("#image")
    assert "a yellow triangle on a blue background" in page.content()


def test_invalid_fields_show_their_error_next_to_them(studio_server, page, alice):
    log_in(page, studio_server, "alice")
    page.fill("#id_prompt", "a red circle")
    page.fill("#id_steps", "5000")
    page.fill("#id_width", "63")
    page.get_by_role("button", name="Generate").click()
    steps_error = page.locator('[data-error-for="steps"]')
    steps_error.wait_for()
    assert "1 to 1000" in steps_error.inner_text()
    assert "multiple of 8" in page.locator('[data-error-for="width"]').inner_text()


# Whether an element lies wholly in the viewport, below the sticky top bar.
IN_SIGHT = """(selector) => {
    const box = document.querySelector(selector).getBoundingClientRect();
    const bar = document.querySelector(".topbar").getBoundingClientRect().bottom;
    return box.top >= bar && box.bottom <= window.innerHeight;
}"""


def test_the_generate_page_works_at_phone_width(studio_server, browser, alice):
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.set_default_timeout(15000)
    log_in(page, studio_server, "alice")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390
    assert page.locator("#generate-button").is_visible()
    # The live preview sits above the form here, the prompt far above the button: whichever
    # the person needs next is brought into sight when they press it.
    page.fill("#id_prompt", "circle " * 400)
    page.locator("#generate-button").click()
    page.locator('[data-error-for="prompt"]').wait_for()
    assert not page.evaluate(IN_SIGHT, "#generate-button")  # the page did move
    assert page.evaluate("document.activeElement.id") == "id_prompt"
    assert page.evaluate(IN_SIGHT, '[data-error-for="prompt"]')
    page.fill("#id_prompt", "a red circle")
    page.locator("#generate-button").click()
    page.locator("#cancel-button").wait_for()
    page.wait_for_function(IN_SIGHT, arg=".live")
    assert not page.evaluate(IN_SIGHT, "#generate-button")
    page.locator("#cancel-button").click()  # no worker runs here: the queued job ends now
    page.wait_for_function("document.getElementById('status-text').textContent === 'Canceled'")
    context.close()


def test_every_unfinished_job_on_the_page_keeps_its_row_up_to_date(
    studio_server, celery_worker, page, alice
):
    """The preview follows the job submitted last; the job before it, and one that was still
    running when the page was loaded, end in "Recent jobs" too, linked to their gallery pages."""
    from playwright.sync_api import expect

    from generation.models import Job

    def ends_succeeded(row):
        expect(row.locator(".badge")).to_have_text("Succeeded", timeout=60_000)
        job = Job.objects.get(pk=row.get_attribute("data-job"))
        expect(row.locator("a.thumb-link")).to_have_attribute(
            "href", job.outputs.get().get_page_url()
        )

    log_in(page, studio_server, "alice")
    rows = page.locator("#recent-jobs tbody tr[data-job]")  # the newest first
    page.fill("#id_prompt", "a red circle on a blue background")
    page.fill("#id_steps", "300")
    page.get_by_role("button", name="Generate").click()
    expect(rows).to_have_count(1)
    page.fill("#id_steps", "20")
    page.get_by_role("button", name="Generate").click()
    expect(rows).to_have_count(2)
    assert Job.objects.get(pk=rows.nth(1).get_attribute("data-job")).status != "succeeded"
    ends_succeeded(rows.nth(1))
    ends_succeeded(rows.nth(0))
    page.fill("#id_steps", "400")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status-text")).to_contain_text("Step", timeout=60_000)
    page.reload()  # the job is running: its row is now drawn from the database
    assert rows.nth(0).get_attribute("data-status") == "running"
    ends_succeeded(rows.nth(0))


def test_after_a_reload_the_panel_resumes_the_running_job_and_rows_cancel(
    studio_server, celery_worker, page, alice
):
    from playwright.sync_api import expect

    from generation.models import Job

    log_in(page, studio_server, "alice")
    rows = page.locator("#recent-jobs tbody tr[data-job]")  # the newest first
    page.fill("#id_prompt", "a red circle on a blue background")
    page.fill("#id_steps", "1000")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status-text")).to_contain_text("Step", timeout=60_000)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status-text")).to_contain_text("Queued")
    page.reload()
    # The panel picks up the running job, the older of the two, not the newest.
    expect(page.locator("#status-text")).to_contain_text("Step")
    expect(page.locator("#preview")).to_be_visible()
    assert page.locator("#cancel-button").is_visible()
    queued, running = rows.nth(0), rows.nth(1)
    queued.locator("button[data-cancel]").click()
    expect(queued.locator(".badge")).to_have_text("Canceled")
    expect(queued.locator("button[data-cancel]")).to_have_count(0)
    expect(running.locator(".badge")).to_have_text("Running")
    page.locator("#cancel-button").click()
    expect(page.locator("#status-text")).to_have_text("Canceled", timeout=30_000)
    expect(running.locator(".badge")).to_have_text("Canceled")
    ids = [queued.get_attribute("data-job"), running.get_attribute("data-job")]
    assert set(Job.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"canceled"}


def test_a_waiting_job_shows_its_place_as_the_queue_moves(studio_server, page, alice, bob):
    """No worker runs: the jobs wait, and the page hears every change to their order."""
    from django.conf import settings
    from playwright.sync_api import expect
    from redis import Redis

    from generation import recipes, services, worker_registry

    def queue(user):
        recipe = recipes.recipe_from_params({"prompt": "a red circle", "steps": 4})
        return services.job_submit(user=user, recipe=recipe)

    # No worker reports (one another test killed would, for 45 s): the page says so too.
    Redis.from_url(settings.CELERY_BROKER_URL).delete(*worker_registry.keys())
    worker_registry.withdraw("nobody@nowhere")  # and this process reads it again
    earlier = queue(alice)
    log_in(page, studio_server, "alice")
    page.fill("#id_prompt", "a blue square")
    page.get_by_role("button", name="Generate").click()
    status = page.locator("#status-text")
    expect(status).to_have_text("Queued — 1 ahead of you (waiting: no worker is up)")
    queue(bob)  # bob's turn comes before alice's second job
    expect(status).to_have_text("Queued — 2 ahead of you (waiting: no worker is up)")
    services.job_cancel(job=earlier, actor=alice)
    expect(status).to_have_text("Queued — next up (waiting: no worker is up)")


def test_the_page_says_when_a_job_waits_for_its_model_to_load(studio_server, page, alice):
    """A worker that did not load the default model as it started (preload off) loads it for
    the first job, and the page says so until the first step."""
    from playwright.sync_api import expect

    from tests.conftest import Worker

    log_in(page, studio_server, "alice")
    page.evaluate("""() => {
        window.said = [];
        const status = document.getElementById("status-text");
        new MutationObserver(() => window.said.push(status.textContent))
            .observe(status, {childList: true, characterData: true, subtree: true});
    }""")
    page.fill("#id_prompt", "a red circle on a blue background")
    page.fill("#id_steps", "4")
    page.get_by_role("button", name="Generate").click()
    status = page.locator("#status-text")
    # The page watches before any worker runs.
    expect(status).to_have_text(re.compile(r"^Queued — next up"))
    worker = Worker(env={"STUDIO_WORKER_PRELOAD": "0"})
    worker.start()
    try:
        expect(status).to_contain_text("Done — seed", timeout=120_000)
    finally:
        worker.stop()
    said = page.evaluate("window.said")
    loading = f"Loading the model “{settings.STUDIO_DEMO_MODEL_NAME}”…"
    assert loading in said
    steps = [i for i, text in enumerate(said) if text.startswith("Step ") and text[5] != "0"]
    assert said.index(loading) < steps[0]  # until the first step
