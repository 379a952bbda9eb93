import pytest

from tests.conftest import PASSWORD

pytestmark = pytest.mark.e2e


def test_a_new_user_signs_up_logs_in_and_sees_home(studio_server, page):
    page.goto(studio_server.url + "/")
    page.get_by_role("link", name="Sign up").first.click()
    page.fill("#id_username", "dora")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_selector("text=Welcome to Studio, dora.")

    page.get_by_role("button", name="Log out").click()
    page.get_by_role("link", name="Log in").first.click()
    page.fill("#id_username", "dora")
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_selector("h1:has-text('Text to image, on your own servers.')")
    assert page.locator(".nav .who").inner_text() == "dora"


def test_a_logged_in_browser_holds_a_websocket_open(studio_server, page, alice):
    page.goto(studio_server.url + "/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_selector(".nav .who")
    message = page.evaluate(
        """() => new Promise((resolve, reject) => {
            const ws = new WebSocket(location.origin.replace('http', 'ws') + '/ws/hello/');
            ws.onmessage = (e) => { resolve(JSON.parse(e.data)); ws.close(); };
            ws.onerror = () => reject('websocket refused');
        })"""
    )
    assert message["user"] == "alice"


def test_signup_errors_show_inline(studio_server, page):
    page.goto(studio_server.url + "/signup/")
    page.fill("#id_username", "dora")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", "mismatch-mismatch")
    page.get_by_role("button", name="Sign up").click()
    assert page.locator("#id_password2-error").is_visible()
