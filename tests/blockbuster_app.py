"""This app with BlockBuster switched on in the server's own process: ``uvicorn tests.blockbuster_app:app``.

BlockBuster (PyPI ``blockbuster``) replaces blocking functions (``time.sleep``,
file, socket and ``sqlite3`` calls, lock acquisitions) with wrappers that raise
``BlockingError`` when called from a thread where an event loop is running. A
test suite switches it on to catch blocking calls before production does.
"""

from __future__ import annotations

from blockbuster import BlockBuster

from asgi_app import create_app
from plumbing.settings import Settings

blockbuster = BlockBuster()
blockbuster.activate()
# /healthz looks at /proc on the loop on purpose (a few microseconds): the one place allowed to.
for function in ("os.stat", "os.listdir", "io.TextIOWrapper.read"):
    blockbuster.functions[function].can_block_in("plumbing/healthz.py", {"healthz", "resident_bytes"})
# The console lines and uvicorn's log go to a file here, not a terminal (BlockBuster lets a terminal be):
# a write into the process's own output buffer, as any app's logging does.
blockbuster.functions["io.BufferedWriter.write"].can_block_in("plumbing/record.py", {"say"})
blockbuster.functions["io.BufferedWriter.write"].can_block_in("logging/__init__.py", {"flush", "emit"})
app = create_app(Settings.from_env())
