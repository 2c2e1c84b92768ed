"""The web workstation: server-rendered pages (Jinja2 + htmx) for doctors, consultants and
operators, with built-in accounts, OIDC single sign-on, cookie sessions and CSRF protection.

``hub.web.routes.router`` is included into the FastAPI app; every asset is served from
``hub/web/static`` at ``/static`` (no CDN).
"""
