"""The web workstation's sign-in: accounts (scrypt, lockout, TOTP), sessions, CSRF, language,
OIDC single sign-on, and ``yijian users`` — all through HTTP against a running hub.

httpx does not send ``Secure`` cookies over plain http, so the tests keep the cookies
themselves (``Browser``) and send them explicitly, as Chromium does on 127.0.0.1.
OIDC is tested against a small real provider served in a thread (discovery, JWKS, an
authorization endpoint that redirects back with a code, a token endpoint issuing ES256 ID
tokens), with a second hub process-instance configured to use it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import asyncpg
import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from hub.api.app import create_app
from hub.settings import load_settings
from hub.storage.database import libpq_url
from hub.web import totp
from tests.conftest import YIJIAN, HubUnderTest, _free_port, unique

PASSWORD = "correct horse battery"
LOGIN_FAILED = "用户名或密码错误"


@dataclass
class Browser:
    """A cookie jar that keeps Secure cookies over http (like Chromium on 127.0.0.1) and
    follows no redirect by itself."""

    base_url: str
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", None) or {})
        if self.cookies and url.startswith(("/", self.base_url)):
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        full = url if url.startswith("http") else self.base_url + url
        response = httpx.request(method, full, headers=headers, timeout=30, **kw)
        if full.startswith(self.base_url):
            for header in response.headers.get_list("set-cookie"):
                name, _, rest = header.partition("=")
                value = rest.split(";", 1)[0].strip('"')
                if "max-age=0" in header.lower() or not value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = value
        return response

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def login(self, username: str, password: str = PASSWORD, next_url: str = "/") -> httpx.Response:
        return self.post(
            "/login", data={"username": username, "password": password, "next": next_url}
        )

    def csrf(self, path: str = "/") -> str:
        page = self.get(path)
        match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert match, page.text[:500]
        return match.group(1)


def run_cli(hub: HubUnderTest, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [YIJIAN, *args], env=hub.env, input=stdin, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def add_user(hub: HubUnderTest, role: str = "doctor", *extra: str) -> dict[str, Any]:
    """A new web user (unique name) registered through ``yijian users add``."""
    username = f"{role}-{unique()}"
    out = run_cli(
        hub,
        "users", "add", "--username", username, "--role", role,
        "--organization", hub.org_b, "--name", f"测试{role}",
        "--password-stdin", "--json", *extra,
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    record = json.loads(out)
    assert record["username"] == username
    assert "password" not in record  # it was given, not generated
    return dict(record)


def sql(hub: HubUnderTest, statement: str, *args: Any) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(libpq_url(hub.database_url))
        try:
            return await conn.fetch(statement, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture
def browser(hub: HubUnderTest) -> Browser:
    return Browser(hub.base_url)


# -- passwords, sessions ---------------------------------------------------------------------


def test_login_with_password_opens_a_session(hub: HubUnderTest, browser: Browser) -> None:
    username = add_user(hub)["username"]
    assert "登录" in browser.get("/login").text
    response = browser.login(username)
    assert response.status_code == 303, response.text[:300]
    assert response.headers["location"] == "/"
    assert "yijian_session" in browser.cookies
    home = browser.get("/")
    assert home.status_code == 200
    assert "测试doctor" in home.text
    assert 'hx-headers=\'{"X-CSRF-Token": "' in home.text
    # the session's row holds the hash of the cookie value, never the value itself
    rows = sql(hub, "SELECT id_hash FROM web_session WHERE username = $1", username)
    assert [bytes(r["id_hash"]) for r in rows] == [
        hashlib.sha256(browser.cookies["yijian_session"].encode()).digest()
    ]


def test_session_cookie_flags(hub: HubUnderTest, browser: Browser) -> None:
    username = add_user(hub)["username"]
    response = browser.login(username)
    cookie = next(
        h for h in response.headers.get_list("set-cookie") if h.startswith("yijian_session=")
    )
    attributes = {part.strip().split("=")[0].lower(): part for part in cookie.split(";")}
    assert "httponly" in attributes
    assert "secure" in attributes
    assert attributes["samesite"].strip().lower() == "samesite=lax"
    assert attributes["path"].strip() == "Path=/"


def test_wrong_password_and_unknown_user_get_the_same_answer(
    hub: HubUnderTest, browser: Browser
) -> None:
    username = add_user(hub)["username"]
    wrong = browser.login(username, "not the password")
    unknown = browser.login(f"nobody-{unique()}", "not the password")
    assert wrong.status_code == unknown.status_code == 401
    assert LOGIN_FAILED in wrong.text
    error = re.compile(r'<p class="alert alert-error"[^>]*>(.*?)</p>', re.S)
    assert error.search(wrong.text).group(1) == error.search(unknown.text).group(1)  # type: ignore[union-attr]
    assert "yijian_session" not in browser.cookies


def test_five_failures_lock_the_account(hub: HubUnderTest, browser: Browser) -> None:
    username = add_user(hub)["username"]
    for _ in range(5):
        assert browser.login(username, "wrong password!").status_code == 401
    locked = browser.login(username)  # the right password, but locked: the same answer
    assert locked.status_code == 401
    assert LOGIN_FAILED in locked.text and "15" in locked.text
    [row] = sql(
        hub,
        "SELECT failed_logins, locked_until > now() + interval '14 minutes' AS locked"
        " FROM web_user WHERE username = $1",
        username,
    )
    assert row["failed_logins"] == 5 and row["locked"]
    # the operator resets the password: unlocked
    run_cli(
        hub, "users", "reset-password", username, "--password-stdin", stdin="a new password 1\n"
    )
    assert browser.login(username, "a new password 1").status_code == 303


def test_login_rotates_the_session(hub: HubUnderTest, browser: Browser) -> None:
    username = add_user(hub)["username"]
    browser.login(username)
    first = browser.cookies["yijian_session"]
    browser.login(username)  # sent with the first cookie
    second = browser.cookies["yijian_session"]
    assert first != second
    old = Browser(hub.base_url, {"yijian_session": first})
    assert old.get("/").status_code == 303  # the old session ended with the new login
    assert browser.get("/").status_code == 200


def test_logout_ends_the_session(hub: HubUnderTest, browser: Browser) -> None:
    username = add_user(hub)["username"]
    browser.login(username)
    cookie = browser.cookies["yijian_session"]
    token = browser.csrf()
    response = browser.post("/logout", data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert "yijian_session" not in browser.cookies
    again = Browser(hub.base_url, {"yijian_session": cookie})
    assert again.get("/").status_code == 303
    assert not sql(hub, "SELECT 1 FROM web_session WHERE username = $1", username)


def test_idle_session_expires(hub: HubUnderTest, browser: Browser) -> None:
    username = add_user(hub)["username"]
    browser.login(username)
    assert browser.get("/").status_code == 200
    sql(
        hub,
        "UPDATE web_session SET last_seen_at = now() - interval '31 minutes' WHERE username = $1",
        username,
    )
    response = browser.get("/")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")


def test_session_past_its_absolute_limit_ends(hub: HubUnderTest, browser: Browser) -> None:
    username = add_user(hub)["username"]
    browser.login(username)
    sql(hub, "UPDATE web_session SET expires_at = now() WHERE username = $1", username)
    assert browser.get("/").status_code == 303


def test_unauthenticated_page_redirects_to_login(hub: HubUnderTest, browser: Browser) -> None:
    response = browser.get("/?x=1")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/%3Fx%3D1"
    htmx = browser.get("/?x=1", headers={"HX-Request": "true"})
    assert htmx.headers["HX-Redirect"] == "/login?next=/%3Fx%3D1"


def test_login_goes_back_to_the_page_asked_for_and_never_off_site(
    hub: HubUnderTest, browser: Browser
) -> None:
    username = add_user(hub)["username"]
    assert browser.login(username, next_url="/?patient=1").headers["location"] == "/?patient=1"
    assert browser.login(username, next_url="//evil.example/").headers["location"] == "/"
    assert browser.login(username, next_url="https://evil.example/").headers["location"] == "/"


# -- CSRF ------------------------------------------------------------------------------------


def test_csrf_token_is_required_on_unsafe_requests(hub: HubUnderTest, browser: Browser) -> None:
    username = add_user(hub)["username"]
    browser.login(username)
    token = browser.csrf()
    missing = browser.post("/logout", data={})
    assert missing.status_code == 403
    assert "text/html" in missing.headers["content-type"]
    assert "安全令牌" in missing.text
    wrong = browser.post("/logout", data={"csrf_token": token[:-2] + "xx"})
    assert wrong.status_code == 403
    wrong_header = browser.post("/logout", headers={"X-CSRF-Token": "nope"})
    assert wrong_header.status_code == 403
    cross = browser.post(
        "/logout", data={"csrf_token": token}, headers={"Origin": "https://evil.example"}
    )
    assert cross.status_code == 403
    assert browser.get("/").status_code == 200  # none of those logged out
    by_header = browser.post("/logout", headers={"X-CSRF-Token": token, "Origin": hub.base_url})
    assert by_header.status_code == 303
    assert browser.get("/").status_code == 303


def test_cross_origin_login_is_refused(hub: HubUnderTest, browser: Browser) -> None:
    username = add_user(hub)["username"]
    response = browser.post(
        "/login",
        data={"username": username, "password": PASSWORD},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 403
    assert "yijian_session" not in browser.cookies


# -- TOTP ------------------------------------------------------------------------------------


RFC6238_SHA1 = [  # RFC 6238 appendix B, SHA-1, the ASCII secret "12345678901234567890"
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]


@pytest.mark.parametrize(("timestamp", "expected"), RFC6238_SHA1)
def test_totp_matches_rfc6238_vectors(timestamp: int, expected: str) -> None:
    key = b"12345678901234567890"
    assert totp.hotp(key, totp.step_at(timestamp), digits=8) == expected
    secret = base64.b32encode(key).decode()
    assert totp.code_at(secret, timestamp) == expected[-6:]
    assert totp.matching_step(secret, expected[-6:], timestamp) == totp.step_at(timestamp)
    assert totp.matching_step(secret, expected[-6:], timestamp + 30) == totp.step_at(timestamp)
    assert totp.matching_step(secret, expected[-6:], timestamp + 90) is None


def test_login_with_totp(hub: HubUnderTest, browser: Browser) -> None:
    record = add_user(hub, "doctor", "--totp")
    username, secret = record["username"], record["totp_secret"]
    assert record["totp_uri"].startswith("otpauth://totp/")
    [row] = sql(hub, "SELECT totp_secret FROM web_user WHERE username = $1", username)
    assert secret not in row["totp_secret"]  # stored sealed

    response = browser.login(username, next_url="/?p=1")
    assert response.status_code == 303
    assert response.headers["location"] == "/login/totp?next=/%3Fp%3D1"
    pending = browser.cookies["yijian_session"]
    assert browser.get("/").status_code == 303  # a password alone is not a login
    token = browser.csrf("/login/totp?next=/%3Fp%3D1")

    wrong = browser.post("/login/totp", data={"code": "000000", "csrf_token": token})
    if wrong.status_code != 401:  # 000000 happened to be right: astronomically unlikely
        pytest.skip("the random secret's current code was 000000")
    assert "验证码错误" in wrong.text
    code = totp.code_at(secret, time.time())
    done = browser.post("/login/totp", data={"code": code, "csrf_token": token, "next": "/?p=1"})
    assert done.status_code == 303 and done.headers["location"] == "/?p=1"
    assert browser.cookies["yijian_session"] != pending  # a new session, not the pending one
    assert browser.get("/").status_code == 200

    # the same code (the same step) is not accepted twice
    other = Browser(hub.base_url)
    other.login(username)
    token = other.csrf("/login/totp")
    replay = other.post("/login/totp", data={"code": code, "csrf_token": token})
    assert replay.status_code == 401
    assert other.get("/").status_code == 303


def test_totp_can_be_turned_off(hub: HubUnderTest, browser: Browser) -> None:
    username = add_user(hub, "doctor", "--totp")["username"]
    out = json.loads(run_cli(hub, "users", "totp", username, "--disable", "--json"))
    assert out == {"username": username, "totp": False}
    assert browser.login(username).headers["location"] == "/"


# -- language, errors --------------------------------------------------------------------------


def test_language_switch(hub: HubUnderTest, browser: Browser) -> None:
    assert "用户名" in browser.get("/login").text
    response = browser.get("/lang/en?next=/login")
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert browser.cookies["yijian_lang"] == "en"
    page = browser.get("/login")
    assert '<html lang="en">' in page.text
    assert "Username" in page.text and "Sign in" in page.text
    assert "用户名" not in page.text
    browser.get("/lang/zh-CN?next=/login")
    assert "用户名" in browser.get("/login").text
    assert browser.get("/lang/xx?next=https://evil.example").headers["location"] == "/"


def test_web_errors_are_html_pages_and_api_errors_stay_fhir(
    hub: HubUnderTest, browser: Browser
) -> None:
    page = browser.get("/login/oidc/no-such-provider")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "没有这个统一身份认证提供方" in page.text
    api = httpx.get(hub.fhir + "/Patient/x")
    assert api.status_code == 401
    assert api.json()["resourceType"] == "OperationOutcome"


def test_static_assets_are_served_with_versions(hub: HubUnderTest, browser: Browser) -> None:
    page = browser.get("/login").text
    css = re.search(r'href="(/static/app\.css\?v=[0-9a-f]+)"', page)
    assert css, page[:800]
    assert browser.get(css.group(1)).status_code == 200
    assert browser.get("/static/app.js").status_code == 200
    assert "/static/vendor/htmx.min.js" in page


# -- the users CLI -----------------------------------------------------------------------------


def test_users_cli(hub: HubUnderTest, browser: Browser) -> None:
    username = f"admin-{unique()}"
    created = json.loads(
        run_cli(
            hub,
            "users",
            "add",
            "--username",
            username.upper(),
            "--role",
            "admin",
            "--organization",
            hub.org_a,
            "--name",
            "运维 王",
            "--json",
        )
    )
    assert created["username"] == username  # lower-cased
    generated = created["password"]
    assert len(generated) >= 16
    listed = {u["username"]: u for u in json.loads(run_cli(hub, "users", "list", "--json"))}
    assert listed[username]["role"] == "admin" and listed[username]["active"]
    assert "password_hash" not in listed[username]

    assert browser.login(username, generated).headers["location"] == "/ops"
    assert browser.get("/?x").status_code in (200, 303)  # signed in

    out = run_cli(hub, "users", "disable", username)
    assert "1 session(s) ended" in out
    assert browser.get("/").status_code == 303
    assert browser.login(username, generated).status_code == 401
    run_cli(hub, "users", "enable", username)
    assert browser.login(username, generated).status_code == 303

    short = subprocess.run(
        [YIJIAN, "users", "reset-password", username, "--password-stdin"],
        env=hub.env, input="short\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert short.returncode != 0 and "at least 10" in short.stderr
    duplicate = subprocess.run(
        [YIJIAN, "users", "add", "--username", username, "--role", "doctor",
         "--organization", hub.org_a, "--name", "x", "--json"],
        env=hub.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert duplicate.returncode != 0 and "exists already" in duplicate.stderr
    no_org = subprocess.run(
        [YIJIAN, "users", "add", "--username", f"x-{unique()}", "--role", "doctor",
         "--organization", "no-such-org", "--name", "x"],
        env=hub.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert no_org.returncode != 0 and "no Organization" in no_org.stderr


# -- OIDC --------------------------------------------------------------------------------------


class TinyProvider:
    """A minimal OpenID Connect provider: discovery, JWKS, authorize (auto-consent as the
    person set in ``next_person``), and a token endpoint checking PKCE and the client."""

    client_id = "yijian-web"
    client_secret = "provider-secret-123"

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = "k1"
        self.codes: dict[str, dict[str, str]] = {}
        self.next_person = {"sub": "sub-0", "preferred_username": "x", "name": "x"}
        self.app = Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.discovery),
                Route("/jwks", self.jwks),
                Route("/authorize", self.authorize),
                Route("/token", self.token, methods=["POST"]),
            ]
        )

    async def discovery(self, request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.base_url,
                "authorization_endpoint": self.base_url + "/authorize",
                "token_endpoint": self.base_url + "/token",
                "jwks_uri": self.base_url + "/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            }
        )

    async def jwks(self, request: Request) -> Response:
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        return JSONResponse({"keys": [{**public, "kid": self.kid, "alg": "ES256", "use": "sig"}]})

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        assert q["response_type"] == "code" and q["client_id"] == self.client_id
        assert q["code_challenge_method"] == "S256" and q["scope"] == "openid profile email"
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "challenge": q["code_challenge"],
            "nonce": q["nonce"],
            "redirect_uri": q["redirect_uri"],
            **self.next_person,
        }
        target = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]})
        return RedirectResponse(target, status_code=302)

    async def token(self, request: Request) -> Response:
        form = await request.form()
        basic = base64.b64decode(request.headers["authorization"].split()[1]).decode()
        if basic != f"{self.client_id}:{self.client_secret}":
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        grant = self.codes.pop(str(form["code"]), None)
        verifier = str(form.get("code_verifier", ""))
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .decode()
            .rstrip("=")
        )
        if grant is None or grant["challenge"] != challenge:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        assert form["redirect_uri"] == grant["redirect_uri"]
        now = int(time.time())
        claims = {
            "iss": self.base_url,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": grant["nonce"],
            "sub": grant["sub"],
            "preferred_username": grant["preferred_username"],
            "name": grant["name"],
        }
        id_token = jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": self.kid})
        return JSONResponse(
            {
                "access_token": secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "id_token": id_token,
                "expires_in": 300,
            }
        )


def _serve(app: Any, port: int) -> uvicorn.Server:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    return server


@pytest.fixture(scope="module")
def oidc_hub(hub: HubUnderTest) -> Iterator[tuple[str, TinyProvider]]:
    """A provider, and a second hub (same database and keys) configured to use it."""
    provider_port = _free_port()
    provider = TinyProvider(f"http://127.0.0.1:{provider_port}")
    provider_server = _serve(provider.app, provider_port)
    settings = load_settings(
        database_url=hub.database_url,
        data_dir=hub.env["YIJIAN_DATA_DIR"],
        log_level="WARNING",
        oidc_providers=[
            {
                "name": "city1",
                "label": "市一医院统一身份认证",
                "server_metadata_url": provider.base_url + "/.well-known/openid-configuration",
                "client_id": provider.client_id,
                "client_secret": provider.client_secret,
                "organization": hub.org_a,
                "default_role": "doctor",
            }
        ],
    )
    port = _free_port()
    hub_server = _serve(create_app(settings), port)
    yield f"http://127.0.0.1:{port}", provider
    hub_server.should_exit = True
    provider_server.should_exit = True


def _sso(browser: Browser, next_url: str = "/") -> httpx.Response:
    """Click the SSO button and follow the provider's redirects back to the hub."""
    start = browser.get(f"/login/oidc/city1?next={next_url}")
    assert start.status_code == 303, start.text[:300]
    authorize = start.headers["location"]
    assert authorize.startswith(browser.cookies and "http://127.0.0.1")
    assert "yijian_oidc" in browser.cookies
    back = browser.get(authorize)  # the provider (no hub cookies sent there)
    assert back.status_code == 302
    return browser.get(back.headers["location"])


def test_oidc_login_creates_then_reuses_an_account(
    hub: HubUnderTest, oidc_hub: tuple[str, TinyProvider]
) -> None:
    base, provider = oidc_hub
    browser = Browser(base)
    assert "市一医院统一身份认证" in browser.get("/login").text
    name = f"sso-{unique()}"
    provider.next_person = {"sub": f"sub-{unique()}", "preferred_username": name, "name": "赵医生"}
    done = _sso(browser, "/?from=sso")
    assert done.status_code == 303, done.text[:500]
    assert done.headers["location"] == "/?from=sso"
    assert browser.get("/").status_code == 200
    [row] = sql(
        hub,
        "SELECT role, organization, display_name, oidc_subject, password_hash FROM web_user"
        " WHERE username = $1",
        name,
    )
    assert (row["role"], row["organization"], row["display_name"]) == (
        "doctor", hub.org_a, "赵医生",
    )  # fmt: skip
    assert row["oidc_subject"] == provider.next_person["sub"] and row["password_hash"] is None

    second = Browser(base)
    provider.next_person = {**provider.next_person, "preferred_username": "renamed-upstream"}
    assert _sso(second).status_code == 303
    assert second.get("/").status_code == 200
    assert not sql(hub, "SELECT 1 FROM web_user WHERE username = 'renamed-upstream'")
    assert len(sql(hub, "SELECT 1 FROM web_user WHERE oidc_subject = $1", row["oidc_subject"])) == 1


def test_oidc_links_an_unlinked_account_of_the_providers_hospital_only(
    hub: HubUnderTest, oidc_hub: tuple[str, TinyProvider]
) -> None:
    base, provider = oidc_hub
    same_hospital = f"link-{unique()}"
    run_cli(
        hub, "users", "add", "--username", same_hospital, "--role", "consultant",
        "--organization", hub.org_a, "--name", "钱", "--json",
    )  # fmt: skip
    provider.next_person = {"sub": f"s-{unique()}", "preferred_username": same_hospital,
                            "name": "钱"}  # fmt: skip
    assert _sso(Browser(base)).status_code == 303
    [row] = sql(hub, "SELECT oidc_subject, role FROM web_user WHERE username = $1", same_hospital)
    assert row["oidc_subject"] == provider.next_person["sub"] and row["role"] == "consultant"

    other_hospital = add_user(hub)["username"]  # at org_b: never taken over by org_a's provider
    provider.next_person = {"sub": f"s-{unique()}", "preferred_username": other_hospital,
                            "name": "孙"}  # fmt: skip
    assert _sso(Browser(base)).status_code == 303
    [row] = sql(hub, "SELECT oidc_subject FROM web_user WHERE username = $1", other_hospital)
    assert row["oidc_subject"] is None
    [created] = sql(
        hub, "SELECT username FROM web_user WHERE oidc_subject = $1", provider.next_person["sub"]
    )
    assert created["username"].startswith("city1.")


def test_oidc_callback_with_a_bad_state_is_refused(
    hub: HubUnderTest, oidc_hub: tuple[str, TinyProvider]
) -> None:
    base, provider = oidc_hub
    provider.next_person = {"sub": f"s-{unique()}", "preferred_username": f"b-{unique()}",
                            "name": "x"}  # fmt: skip
    browser = Browser(base)
    start = browser.get("/login/oidc/city1")
    back = browser.get(start.headers["location"])
    callback = urlsplit(back.headers["location"])
    params = {k: v[0] for k, v in parse_qs(callback.query).items()}
    forged = browser.get(
        f"{callback.path}?" + urlencode({"code": params["code"], "state": "forged"})
    )
    assert forged.status_code == 400
    assert "单点登录流程无效" in forged.text
    assert "yijian_session" not in browser.cookies
    without_cookie = Browser(base).get(back.headers["location"])
    assert without_cookie.status_code == 400
    assert not sql(
        hub, "SELECT 1 FROM web_user WHERE oidc_subject = $1", provider.next_person["sub"]
    )
