"""Staff logins for the console: accounts with argon2 password hashes, and the login rate limit.

The failed-login counts live in the database, so the limit holds across every web worker
and server process, not per process.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Index, String, delete, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from models.base import ID_TYPE, Base, utcnow
from models.db import transaction
from models.errors import Conflict, InvalidInput, NotFound
from models.history import StaffAction, StaffMember, record_staff_action

MIN_PASSWORD_LENGTH = 10
# At most this many failed logins for one e-mail from one address in the window, and this many
# from one address whatever the e-mail (someone trying many accounts).
MAX_FAILURES_PER_EMAIL_AND_IP = 5
MAX_FAILURES_PER_IP = 30
FAILURE_WINDOW = timedelta(minutes=15)

_hasher = PasswordHasher()
# Verified when the e-mail is unknown, so a wrong e-mail costs as long as a wrong password
# and the answer time does not tell which accounts exist.
_UNKNOWN_ACCOUNT_HASH = _hasher.hash("no account has this password")


class LoginFailure(Base):
    """One failed staff login (wrong e-mail or password, or a disabled account)."""

    __tablename__ = "staff_login_failures"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    email: Mapped[str] = mapped_column(String(254))
    ip: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_staff_login_failures_ip_at", "ip", "at"),
                      Index("ix_staff_login_failures_email_ip_at", "email", "ip", "at"))


class TooManyLoginFailures(Exception):
    def __init__(self, retry_after_seconds: int):
        super().__init__("too many failed logins")
        self.retry_after_seconds = retry_after_seconds


def normalise_email(email: str) -> str:
    email = (email or "").strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or "." not in domain or len(email) > 254 or any(c.isspace() for c in email):
        raise InvalidInput(f"not an e-mail address: {email!r}", field="email")
    return email


def hash_password(password: str) -> str:
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"the password must have at least {MIN_PASSWORD_LENGTH} characters", field="password")
    return _hasher.hash(password)


# The audit trail's actions for logins (staff_actions.action), beside the order decisions'.
ADD_LOGIN = "add login"
DISABLE_LOGIN = "disable login"


def login_target(email: str) -> str:
    return f"staff member {email}"


def add_staff_member(session: Session, email: str, password: str, *, actor: str) -> StaffMember:
    """A new login, audited in the same transaction: who gave it."""
    email = normalise_email(email)
    if session.scalar(select(StaffMember).where(StaffMember.email == email)) is not None:
        raise Conflict(f"staff member {email} already exists", field="email")
    member = StaffMember(email=email, password_hash=hash_password(password))
    session.add(member)
    session.flush()
    record_staff_action(session, actor=actor, action=ADD_LOGIN, target=login_target(email))
    return member


def disable_staff_member(session: Session, email: str, *, actor: str) -> tuple[StaffMember, bool]:
    """Disable a login (its open sessions stop working at their next request); True if it changed.

    Audited in the same transaction, and so is asking again for a login already disabled (it
    changes nothing, and says so in the row's detail)."""
    member = session.scalar(select(StaffMember).where(StaffMember.email == normalise_email(email)))
    if member is None:
        raise NotFound(f"no staff member {email}")
    changed = member.disabled_at is None
    if changed:
        member.disabled_at = utcnow()
        end_sessions(session, member.id)  # so that no session opened before outlives a login enabled again
    record_staff_action(session, actor=actor, action=DISABLE_LOGIN, target=login_target(member.email),
                        detail=None if changed else "already disabled; nothing changed")
    return member, changed


def login_changes(session: Session) -> dict[str, list[StaffAction]]:
    """Each login's audit rows (who added it, who disabled it), oldest first, by e-mail."""
    rows = session.scalars(select(StaffAction).where(StaffAction.action.in_((ADD_LOGIN, DISABLE_LOGIN)))
                           .order_by(StaffAction.id))
    changes: dict[str, list[StaffAction]] = {}
    for row in rows:
        changes.setdefault(row.target.removeprefix(login_target("")), []).append(row)
    return changes


def authenticate(sessions: sessionmaker[Session], email: str, password: str, ip: str) -> StaffMember | None:
    """The staff member these credentials belong to, else None with the failure recorded.

    A wrong e-mail, a wrong password and a disabled account all answer None, so the login page
    never reveals which accounts exist. Raises TooManyLoginFailures over the limit, checked
    before the password so that a locked-out guesser learns nothing more.

    Two short transactions, and the argon2 hash (~0.1 s, and anyone may ask for one) between
    them with none open: on SQLite every transaction holds the one writer's turn, so a hash
    inside one would stall every webhook, the worker and the relay meanwhile. The second
    checks the limit again before it answers, so guesses sent at once still learn no more
    results than the limit allows, and counts as a match only the account as it was checked.
    """
    email = (email or "").strip().lower()[:254]
    ip = (ip or "unknown")[:64]
    now = utcnow()
    with transaction(sessions) as session:
        _refuse_when_over_limit(session, email, ip, now)
        found = session.execute(select(StaffMember.id, StaffMember.password_hash, StaffMember.disabled_at)
                                .where(StaffMember.email == email)).one_or_none() if email else None
    # No transaction open from here to the next one.
    checked_hash = found.password_hash if found else _UNKNOWN_ACCOUNT_HASH
    matches = _password_matches(checked_hash, password or "") and found is not None and found.disabled_at is None
    new_hash = _hasher.hash(password) if matches and _hasher.check_needs_rehash(checked_hash) else None
    with transaction(sessions) as session:
        _refuse_when_over_limit(session, email, ip, now)
        member = session.get(StaffMember, found.id) if matches else None
        if member is None or member.disabled_at is not None or member.password_hash != checked_hash:
            session.add(LoginFailure(email=email, ip=ip, at=now))
            # Keep the table small: nothing older than the window is ever counted again.
            session.execute(delete(LoginFailure).where(LoginFailure.at < now - FAILURE_WINDOW))
            return None
        if new_hash is not None:
            member.password_hash = new_hash
        member.last_login_at = now
        session.execute(delete(LoginFailure).where(LoginFailure.email == email, LoginFailure.ip == ip))
        return member


def _password_matches(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _refuse_when_over_limit(session: Session, email: str, ip: str, now: datetime) -> None:
    since = now - FAILURE_WINDOW
    for limit, where in ((MAX_FAILURES_PER_EMAIL_AND_IP, (LoginFailure.email == email, LoginFailure.ip == ip)),
                         (MAX_FAILURES_PER_IP, (LoginFailure.ip == ip,))):
        count, oldest = session.execute(
            select(func.count(), func.min(LoginFailure.at)).where(*where, LoginFailure.at >= since)).one()
        if count >= limit:
            retry_after = int((oldest + FAILURE_WINDOW - now).total_seconds()) + 1
            raise TooManyLoginFailures(max(retry_after, 1))


def end_sessions(session: Session, member_id: int) -> None:
    """End every console session of this login, on every device, copies of its cookie included.

    A session is Flask's signed cookie, which the browser keeps: it carries the login's session
    generation it was opened under, and one more here makes each of them stale at its next request
    (active_staff_member). Added in the database, so two at once both count."""
    session.execute(update(StaffMember).where(StaffMember.id == member_id)
                    .values(session_generation=StaffMember.session_generation + 1))


def active_staff_member(session: Session, member_id: int, session_generation: int) -> StaffMember | None:
    """The login a console session belongs to, if it is enabled and the session was opened under its
    current generation (not ended since by a logout or by disabling it); one read by primary key."""
    member = session.get(StaffMember, member_id)
    if member is None or member.disabled_at is not None or member.session_generation != session_generation:
        return None
    return member
