"""The web workstation's sign-in: accounts (scrypt, lockout, TOTP), sessions, CSRF, language,
OIDC single sign-on, and ``yijian users`` — all through HTTP against the running hub.

httpx does not send ``Secure`` cookies over plain http, so each test keeps the session cookie
itself and sends it explicitly (Chromium, in the browser tests, accepts them on 127.0.0.1).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import httpx
import pytest

from tests.conftest import HubUnderTest, unique

PASSWORD = "correct horse battery"


@dataclass
class Browser:
    """A cookie jar that, unlike httpx's, keeps Secure cookies over http (like Chromium on
    127.0.0.1), and follows no redirect by itself."""

    base_url: str
    cookies: dict[str, str] = field(default_factory=dict)
    last: httpx.Response | None = None

    def request(self, method: str, path: str, **kw: object) -> httpx.Response:
        headers = dict(kw.pop("headers", {}) or {})  # type: ignore[call-overload]
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        response = httpx.request(
            method,
            self.base_url + path,
            headers=headers,
            timeout=30,
            **kw,  # type: ignore[arg-type]
        )
        for header in response.headers.get_list("set-cookie"):
            name, _, rest = header.partition("=")
            value = rest.split(";", 1)[0].strip('"')
            if "max-age=0" in header.lower() or "expires=thu, 01 jan 1970" in header.lower():
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        self.last = response
        return response

    def get(self, path: str, **kw: object) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: object) -> httpx.Response:
        return self.request("POST", path, **kw)

    def login(self, username: str, password: str = PASSWORD, next_url: str = "/") -> httpx.Response:
        return self.post(
            "/login", data={"username": username, "password": password, "next": next_url}
        )

    def csrf(self, path: str = "/") -> str:
        page = self.get(path)
        match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert match, page.text[:500]
        return match.group(1)


def add_user(
    hub: HubUnderTest, role: str = "doctor", organization: str | None = None, **extra: str
) -> str:
    username = f"{role}-{unique()}"
    args = [
        "users",
        "add",
        "--username",
        username,
        "--role",
        role,
        "--organization",
        organization or hub.org_b,
        "--name",
        f"测试{role}",
        "--password-stdin",
        "--json",
    ]
    done = subprocess_input(hub, args, PASSWORD + "\n")
    assert json.loads(done)["username"] == username
    return username


def subprocess_input(hub: HubUnderTest, args: list[str], stdin: str) -> str:
    import subprocess

    from tests.conftest import YIJIAN

    done = subprocess.run(
        [YIJIAN, *args], env=hub.env, input=stdin, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def browser(hub: HubUnderTest) -> Browser:
    return Browser(hub.base_url)


def test_login_with_password_opens_a_session(hub: HubUnderTest, browser: Browser) -> None:
    username = add_user(hub)
    assert "登录" in browser.get("/login").text
    response = browser.login(username)
    assert response.status_code == 303, response.text[:300]
    assert response.headers["location"] == "/"
    assert "yijian_session" in browser.cookies
    home = browser.get("/")
    assert home.status_code == 200
    assert "测试doctor" in home.text


def test_unauthenticated_page_redirects_to_login(hub: HubUnderTest, browser: Browser) -> None:
    response = browser.get("/?x=1")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/%3Fx%3D1"
