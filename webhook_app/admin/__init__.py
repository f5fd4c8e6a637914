"""The staff console at /admin: logins, sessions, CSRF, and the pages staff work from.

Every /admin URL but the login page needs a logged-in, enabled staff member whose session no
logout has ended (checked once for the whole blueprint, so a new page cannot forget it); every POST
needs the session's CSRF token.
"""
from __future__ import annotations

import secrets
from datetime import timedelta

import structlog
from flask import Blueprint, Flask, Response, abort, g, make_response, redirect, render_template, request, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_login import LoginManager, UserMixin, current_user
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.http import HTTP_STATUS_CODES

from models.base import LARGEST_ID

bp = Blueprint("admin", __name__, url_prefix="/admin")
csrf = CSRFProtect()
login_manager = LoginManager()

# Pages a logged-out visitor may see.
PUBLIC_ENDPOINTS = frozenset({"admin.login"})
SESSION_LIFETIME = timedelta(hours=12)


def page_arg(page_size: int) -> int:
    """The `?page=` of a paged list, from 1. Past the last page any table could have it stays
    there (an empty page, as any page past the end), so its offset always fits the database."""
    page = request.args.get("page", 1, type=int) or 1
    return min(max(page, 1), LARGEST_ID // page_size + 1)


class StaffUser(UserMixin):
    """The logged-in staff member as views see it: `current_user.email` is the actor in audit rows.

    The session cookie keeps `get_id()`: the login's id and the session generation it was opened
    under, so a logout (which adds one to the login's) ends every copy of the cookie too."""

    def __init__(self, member_id: int, email: str, session_generation: int):
        self.id = member_id
        self.email = email
        self.session_generation = session_generation

    def get_id(self) -> str:
        return f"{self.id}:{self.session_generation}"


def actor() -> str:
    """Who is acting, for the audit trail: the logged-in staff member's e-mail."""
    return current_user.email


# The console's session cookie: its own name, sent only to /admin. The shop's screens have theirs
# (SESSION_COOKIE_NAME), with their own CSRF token in every page, and a third-party script on them
# (Stripe.js on the pay step) could read that token and post with the browser's cookies; a staff
# member who shops in the same browser must not lend the shop's pages their console session.
CONSOLE_COOKIE_NAME = "shop_console_session"
CONSOLE_PATH = "/admin"


def _for_the_console() -> bool:
    return bool(request) and (request.path == CONSOLE_PATH or request.path.startswith(CONSOLE_PATH + "/"))


class StaffSessionInterface(SecureCookieSessionInterface):
    """Session cookies are `Secure` whenever the request came over https (or ADMIN_BASE_URL is
    https), so one deployment behind TLS never sends a session over plain http. The console's
    session is a cookie of its own, for /admin only (CONSOLE_COOKIE_NAME). (Stripe's webhook never
    reaches Flask, so it never opens one: `webhook_app.webhooks.WebhookDispatcher`.)
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or (request and request.is_secure))

    def get_cookie_name(self, app: Flask) -> str:
        return CONSOLE_COOKIE_NAME if _for_the_console() else super().get_cookie_name(app)

    def get_cookie_path(self, app: Flask) -> str:
        return CONSOLE_PATH if _for_the_console() else super().get_cookie_path(app)


def init_admin(app: Flask, *, secret_key: str | None, admin_base_url: str) -> None:
    if not secret_key:
        # A Settings built in code, or no SECRET_KEY and no writable instance/: this process signs
        # with its own key, so a staff session works only on the process that made it.
        structlog.get_logger(__name__).warning("secret_key_per_process",
                                               hint="set SECRET_KEY for sessions shared by every web process")
    app.config.update(
        SECRET_KEY=secret_key or secrets.token_urlsafe(48),
        SESSION_COOKIE_NAME="shop_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=admin_base_url.startswith("https://"),
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
        # Only the console's forms are checked (below); the JSON API and Stripe's webhooks have none.
        WTF_CSRF_CHECK_DEFAULT=False,
        # A token lives as long as the session: a page left open for an hour still works.
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.session_interface = StaffSessionInterface()
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "admin.login"
    login_manager.session_protection = "basic"

    from webhook_app.admin import auth, dashboard, dead_letters, orders  # noqa: F401  (their views register on bp)
    from webhook_app.admin.display import money, when

    app.add_template_filter(money, "money")
    app.add_template_filter(when, "when")

    app.register_blueprint(bp)


@login_manager.user_loader
def _load_staff(user_id: str) -> StaffUser | None:
    from models.staff import active_staff_member
    from webhook_app import state

    try:
        # A session opened before session generations (the id alone) has none: it is ended too.
        key, generation = (int(part) for part in user_id.split(":"))
    except ValueError:
        return None
    with state().sessions() as session:
        member = active_staff_member(session, key, generation)
        # A disabled login, or a session ended by a logout, is logged out at its next request.
        return StaffUser(member.id, member.email, member.session_generation) if member else None


@bp.before_request
def _staff_only():
    if request.method == "POST":
        csrf.protect()
    if request.endpoint not in PUBLIC_ENDPOINTS and not current_user.is_authenticated:
        return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
    if any(isinstance(value, int) and value > LARGEST_ID for value in (request.view_args or {}).values()):
        abort(404)  # an id past the id columns names nothing: never ask the database (see LARGEST_ID)
    return None


@bp.after_request
def _console_headers(response):
    if response.mimetype == "text/html" and not response.direct_passthrough:
        # The last guard on every console page: a card number a customer typed into an address,
        # a client secret or an API key pasted into a note never reaches the screen.
        from webhook_app.admin.masking import scrub_text

        response.set_data(scrub_text(response.get_data(as_text=True)))
    # Staff pages show order data: never cached, never framed, nothing loaded from elsewhere.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'none'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    return response


@bp.errorhandler(CSRFError)
def _csrf_refused(exc: CSRFError):
    return render_template("admin/refused.html", title="Form expired or not sent from this console",
                           message="This form was refused because it did not carry this console's security "
                                   "token (it may have expired, or the form came from another site). Nothing "
                                   "was changed. Go back, reload the page and try again.",
                           reason=exc.description), 400


@bp.errorhandler(404)
def _not_found(exc):
    return not_found_page()


# An error page's title and sentence by status (webhook_app.errors decides who gets one): what
# happened and what to do next, never the exception's own text.
ERROR_TEXT = {
    400: ("Request not accepted", "The console could not read what was sent (a malformed form or address). "
                                  "Go back, reload the page and try again."),
    405: ("Not available this way", "This address does not take this kind of request: a form's address opened "
                                    "as a page, or a page's address posted to. Use the console's own links "
                                    "and buttons."),
    413: ("Too large", "What was sent is over the size the console accepts. Shorten it (a note, a list of ids) "
                       "and try again."),
    422: ("Request not accepted", "A value in this request was not accepted. Go back, correct it and try again."),
    500: ("Something went wrong", "The console failed to handle this request; the error is in the log as "
                                  "request_failed with the request id below. Try again; if it fails again, "
                                  "look the id up in the log."),
    503: ("Unavailable", "A service the console needs (the database, or Stripe) did not answer. Try again in a "
                         "moment."),
}
OTHER_ERROR = ("Not possible", "This request could not be completed. Go back and try again.")


def error_page(status: int) -> Response:
    """The console's page for an error answer to a browser (also under an /admin address no route matches)."""
    if status == 404:
        page = not_found_page()
    else:
        title, message = ERROR_TEXT.get(status, OTHER_ERROR)
        reason = f"{status} {HTTP_STATUS_CODES.get(status, 'error')}, request {g.get('request_id', '-')}"
        page = render_template("admin/refused.html", title=title, message=message, reason=reason), status
    # The console's headers and masking, also where no console route matched (no after_request of ours ran).
    return _console_headers(make_response(page))


def not_found_page():
    """The console's "not found" (also for an /admin address no route matches)."""
    # The search box is in the bar only for staff who are logged in.
    search = " Search for it with the box above." if current_user.is_authenticated else ""
    return render_template("admin/refused.html", title="Not found",
                           message="There is nothing at this address: the id may be mistyped, or it belongs to "
                                   f"another environment.{search}",
                           reason="not found"), 404
