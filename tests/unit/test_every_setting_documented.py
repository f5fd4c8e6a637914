"""Every environment variable the service reads is named in README.md or docs/: an operator who sets
only what the docs name gets no default they never heard of (a sender at example.com, a log level
that is read but not used)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# How the code reads a variable: os.environ.get("X"), os.environ["X"], os.getenv("X"), and in
# Settings.from_env env.get("X"), env["X"] or a reading helper given the environment (_int(env, "X", ...),
# gunicorn.conf.py's int_in_range(os.environ, "X", ...)).
READS = re.compile(r"""(?:os\.environ\.get\(|os\.environ\[|os\.getenv\(|\benv\.get\(|\benv\[|"""
                   r"""\b\w+\((?:env|os\.environ),\s*)\s*["']([A-Z][A-Z0-9_]+)["']""")
# The operating system's, passed on to the processes the service starts: not the service's settings.
NOT_SETTINGS = {"PATH", "PYTHONPATH"}


def _read_by_the_service() -> dict[str, set[str]]:
    sources = [*ROOT.glob("models/**/*.py"), *ROOT.glob("consumers/**/*.py"), *ROOT.glob("webhook_app/**/*.py"),
               ROOT / "gunicorn.conf.py"]
    read: dict[str, set[str]] = {}
    for source in sources:
        for name in READS.findall(source.read_text()):
            read.setdefault(name, set()).add(str(source.relative_to(ROOT)))
    return read


def test_every_environment_variable_the_service_reads_is_documented():
    read = _read_by_the_service()
    assert {"DATABASE_URL", "MAIL_FROM", "WORKER_BATCH", "GUNICORN_THREADS"} <= read.keys()  # the scan finds them
    docs = "\n".join(path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    undocumented = {name: sorted(files) for name, files in sorted(read.items()) if name not in NOT_SETTINGS
                    and not re.search(rf"(?<![A-Z0-9_]){name}(?![A-Z0-9_])", docs)}
    assert undocumented == {}, "read from the environment but named nowhere in README.md or docs/"
