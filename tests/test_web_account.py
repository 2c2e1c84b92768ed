"""``/account``: a signed-in person turns their own TOTP second factor on (a new secret, then
a right code from the app) and off (with the current password) — through HTTP against the
running hub, with the login afterwards as the proof."""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qs, urlsplit

import httpx

from hub.web import totp
from tests.conftest import HubUnderTest
from tests.test_web_auth import PASSWORD, Browser, add_user, sql


def signed_in(hub: HubUnderTest, role: str = "doctor") -> tuple[Browser, str]:
    username = add_user(hub, role)["username"]
    browser = Browser(hub.base_url)
    assert browser.login(username).status_code == 303
    return browser, username


def totp_state(page: httpx.Response) -> str:
    match = re.search(r'id="totp-state" data-totp="(on|off)"', page.text)
    assert match, page.text[:2000]
    return match.group(1)


def start_setup(browser: Browser) -> str:
    """Ask for a new secret; the secret the setup page shows."""
    started = browser.post("/account/totp/setup", data={"csrf_token": browser.csrf("/account")})
    assert started.status_code == 303, started.text[:2000]
    assert started.headers["location"] == "/account/totp/setup"
    page = browser.get("/account/totp/setup")
    assert page.status_code == 200
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page.text)
    uri = re.search(r'id="totp-uri" href="([^"]+)"', page.text)
    assert secret and uri, page.text[:3000]
    link = urlsplit(uri.group(1).replace("&amp;", "&"))
    assert link.scheme == "otpauth" and link.netloc == "totp"
    assert parse_qs(link.query)["secret"] == [secret.group(1)]
    return secret.group(1)


def wrong_code(secret: str) -> str:
    """A code that no step near now accepts."""
    now = time.time()
    near = {totp.code_at(secret, now + 30 * drift) for drift in range(-3, 4)}
    return next(code for code in ("000000", "111111", "222222", "333333") if code not in near)


def confirm(browser: Browser, code: str, password: str = PASSWORD) -> httpx.Response:
    token = browser.csrf("/account/totp/setup")
    return browser.post(
        "/account/totp/confirm", data={"code": code, "password": password, "csrf_token": token}
    )


def stored(hub: HubUnderTest, username: str) -> tuple[bool, str | None]:
    [row] = sql(hub, "SELECT totp_enabled, totp_secret FROM web_user WHERE username = $1", username)
    return row["totp_enabled"], row["totp_secret"]


def test_the_top_bar_links_to_the_account_page(hub: HubUnderTest) -> None:
    browser, username = signed_in(hub, "consultant")
    home = browser.get(browser.get("/").headers.get("location", "/"))
    assert 'href="/account"' in home.text
    page = browser.get("/account")
    assert page.status_code == 200
    assert username in page.text and totp_state(page) == "off"
    assert 'action="/account/totp/setup"' in page.text
    browser.get("/lang/en?next=/account")
    assert "Turn on two-step verification" in browser.get("/account").text


def test_pages_need_a_login_and_actions_a_csrf_token(hub: HubUnderTest) -> None:
    anonymous = Browser(hub.base_url).get("/account")
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")
    browser, username = signed_in(hub)
    forged = browser.post("/account/totp/setup", data={})
    assert forged.status_code == 403
    assert stored(hub, username) == (False, None)


def test_enable_with_a_right_code_then_login_asks_for_it(hub: HubUnderTest) -> None:
    browser, username = signed_in(hub)
    secret = start_setup(browser)
    enabled, sealed = stored(hub, username)
    assert not enabled and sealed and secret not in sealed  # stored sealed, not yet required
    assert Browser(hub.base_url).login(username).headers["location"] == "/"

    code = totp.code_at(secret, time.time())
    done = confirm(browser, code)
    assert done.status_code == 303, done.text[:2000]
    assert done.headers["location"] == "/account?done=totp-on"
    page = browser.get(done.headers["location"])
    assert totp_state(page) == "on" and "两步验证已开启" in page.text
    assert browser.get("/account/totp/setup").headers["location"] == "/account"

    other = Browser(hub.base_url)
    assert other.login(username).headers["location"] == "/login/totp?next=/"
    # the code that turned TOTP on has been used: it cannot also sign in
    replay = other.post("/login/totp", data={"code": code, "csrf_token": other.csrf("/login/totp")})
    assert replay.status_code == 401
    assert other.get("/").status_code == 303


def test_a_wrong_code_leaves_totp_off(hub: HubUnderTest) -> None:
    browser, username = signed_in(hub)
    secret = start_setup(browser)
    refused = confirm(browser, wrong_code(secret))
    assert refused.status_code == 422
    assert "验证码不正确" in refused.text
    assert f'id="totp-secret">{secret}<' in refused.text  # the same secret, to try again
    assert stored(hub, username)[0] is False
    assert totp_state(browser.get("/account")) == "off"
    assert Browser(hub.base_url).login(username).headers["location"] == "/"
    malformed = confirm(browser, "12ab")
    assert malformed.status_code == 422 and stored(hub, username)[0] is False
    # A right code without the account's password (a session left open) is not enough.
    no_password = confirm(browser, totp.code_at(secret, time.time()), password="not-the-password")
    assert no_password.status_code == 403 and stored(hub, username)[0] is False


def test_disable_needs_the_current_password(hub: HubUnderTest) -> None:
    record = add_user(hub, "admin", "--totp")
    username, secret = record["username"], record["totp_secret"]
    browser = Browser(hub.base_url)
    assert browser.login(username).headers["location"].startswith("/login/totp")
    code = totp.code_at(secret, time.time())
    signed = browser.post(
        "/login/totp", data={"code": code, "csrf_token": browser.csrf("/login/totp")}
    )
    assert signed.status_code == 303
    page = browser.get("/account")
    assert totp_state(page) == "on" and 'action="/account/totp/disable"' in page.text
    # asking for a new secret while TOTP is on changes nothing
    browser.post("/account/totp/setup", data={"csrf_token": browser.csrf("/account")})
    assert stored(hub, username)[0] is True

    token = browser.csrf("/account")
    wrong = browser.post(
        "/account/totp/disable", data={"password": "not the password", "csrf_token": token}
    )
    assert wrong.status_code == 403 and "密码不正确" in wrong.text
    assert stored(hub, username)[0] is True

    done = browser.post("/account/totp/disable", data={"password": PASSWORD, "csrf_token": token})
    assert done.status_code == 303 and done.headers["location"] == "/account?done=totp-off"
    assert totp_state(browser.get("/account")) == "off"
    assert stored(hub, username) == (False, None)
    assert Browser(hub.base_url).login(username).headers["location"] == "/ops"
