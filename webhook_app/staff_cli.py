"""`shop staff`: the logins of the staff console (/admin).

Adding and disabling a login are staff verbs like the others: `--as NAME` (else SHOP_STAFF, else
the OS user) is who did it, kept in the audit trail with the change; `shop staff list` says it.
Exit codes as the rest of the CLI: 0 success, 1 operation failed, 2 bad usage or unknown id.
"""
from __future__ import annotations

import sys

import click

from webhook_app.staff_verbs import actor_name, staff_verb


class BadUsage(click.ClickException):
    exit_code = 2


def _sessions():
    from webhook_app.cli import _sessions, _settings

    return _sessions(_settings())


@click.group()
def staff():
    """Staff logins for the console at /admin."""


@staff.command("add")
@click.argument("email")
@staff_verb
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of standard input instead of prompting.")
def staff_add(email, password_stdin, actor):
    """Create a login for EMAIL (asks for the password twice, unless --password-stdin)."""
    from models.db import transaction
    from models.errors import Conflict, InvalidInput
    from models.staff import add_staff_member

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        with transaction(_sessions()) as session:
            member = add_staff_member(session, email, password, actor=actor_name(actor))
            email = member.email
    except InvalidInput as exc:
        raise BadUsage(exc.message) from exc
    except Conflict as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"staff member {email} added; they log in at /admin/login")


@staff.command("list")
def staff_list():
    """List staff logins: e-mail, state, created, last login (UTC), and who added and disabled each."""
    from sqlalchemy import select

    from models.history import StaffMember
    from models.staff import DISABLE_LOGIN, login_changes

    with _sessions()() as session:
        members = session.scalars(select(StaffMember).order_by(StaffMember.email)).all()
        changes = login_changes(session)
    if not members:
        click.echo("no staff members (add one with `shop staff add EMAIL`)")
    for m in members:
        state = f"disabled {m.disabled_at:%Y-%m-%d %H:%M}" if m.disabled_at else "active"
        last = f"{m.last_login_at:%Y-%m-%d %H:%M}" if m.last_login_at else "never"
        click.echo(f"{m.email:<40} {state:<26} created {m.created_at:%Y-%m-%d %H:%M}  last login {last}")
        for row in changes.get(m.email, []):
            what = "disabled" if row.action == DISABLE_LOGIN else "added"
            click.echo(f"    {what} by {row.actor} {row.at:%Y-%m-%d %H:%M}" + (f" ({row.detail})" if row.detail else ""))


@staff.command("disable")
@click.argument("email")
@staff_verb
def staff_disable(email, actor):
    """Disable the login of EMAIL: it cannot log in, and its open sessions end at their next request."""
    from models.db import transaction
    from models.errors import InvalidInput, NotFound
    from models.staff import disable_staff_member

    try:
        with transaction(_sessions()) as session:
            member, changed = disable_staff_member(session, email, actor=actor_name(actor))
            email = member.email
    except (NotFound, InvalidInput) as exc:
        raise BadUsage(exc.message) from exc
    click.echo(f"staff member {email} disabled" if changed else f"staff member {email} was already disabled")
