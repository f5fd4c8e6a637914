"""Who a staff verb of the `shop` CLI acts as, for the audit trail (shared by `shop` and `shop staff`)."""
from __future__ import annotations

import os

import click


def staff_verb(command):
    """Every staff verb takes --as for the audit trail (else SHOP_STAFF, else the OS user)."""
    return click.option("--as", "actor", metavar="NAME",
                        help="Who decides, for the audit trail [default: $SHOP_STAFF, else the OS user].")(command)


def actor_name(name: str | None) -> str:
    if name and name.strip():
        return name.strip()
    if os.environ.get("SHOP_STAFF", "").strip():
        return os.environ["SHOP_STAFF"].strip()
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return f"uid {os.getuid()}"
