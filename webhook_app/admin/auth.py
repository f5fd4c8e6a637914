"""Log in and out of the staff console."""
from __future__ import annotations

import structlog
from flask import redirect, render_template, request, session as cookie_session, url_for
from flask_login import current_user, login_user, logout_user

from models.db import transaction
from models.staff import TooManyLoginFailures, authenticate, end_sessions
from models.text import CONTROL_CHARACTERS
from webhook_app import state
from webhook_app.admin import StaffUser, bp

log = structlog.get_logger(__name__)


def safe_next(target: str | None, default: str | None = None) -> str:
    """Only a path inside the console: never an open redirect to another site. Anything else, a line
    break from a form field too (no redirect header can carry one), goes to `default` (the dashboard)."""
    if (target and target.startswith("/admin") and not target.startswith("//") and "\\" not in target
            and not CONTROL_CHARACTERS.search(target)):
        return target
    return default or url_for("admin.dashboard")


@bp.route("/login", methods=["GET", "POST"])
def login():
    next_url = safe_next(request.values.get("next"))
    if request.method == "GET":
        if current_user.is_authenticated:
            return redirect(next_url)
        return render_template("admin/login.html", next_url=next_url, email="")

    email = request.form.get("email", "")
    password = request.form.get("password", "")
    try:
        # No transaction around it: authenticate keeps the password hash out of its own.
        member = authenticate(state().sessions, email, password, request.remote_addr or "unknown")
        user = StaffUser(member.id, member.email, member.session_generation) if member else None
    except TooManyLoginFailures as exc:
        log.warning("staff_login_rate_limited", retry_after=exc.retry_after_seconds)
        minutes = -(-exc.retry_after_seconds // 60)
        response = render_template(
            "admin/login.html", next_url=next_url, email=email,
            error=f"Too many failed logins from your address. Logging in is paused for "
                  f"{minutes} minute{'s' if minutes != 1 else ''}; then try again, or ask an administrator "
                  f"to check your account.")
        return response, 429, {"Retry-After": str(exc.retry_after_seconds)}
    if user is None:
        log.info("staff_login_refused")
        return render_template("admin/login.html", next_url=next_url, email=email,
                               error="Wrong e-mail or password, or this account is disabled."), 401
    # A fresh session on login: nothing set before it (by anyone) carries over.
    cookie_session.clear()
    login_user(user)
    cookie_session.permanent = True
    log.info("staff_logged_in", staff_id=user.id)
    return redirect(next_url)


@bp.post("/logout")
def logout():
    # Clearing this browser's cookie is not enough: the cookie is the whole session, and a copy of
    # it would open the console until it expired. Ending the login's sessions in the database ends
    # every copy, and the login's sessions on its other devices with them (docs in README).
    with transaction(state().sessions) as session:
        end_sessions(session, current_user.id)
    log.info("staff_logged_out", staff_id=current_user.id)
    logout_user()
    cookie_session.clear()
    return redirect(url_for("admin.login"))
