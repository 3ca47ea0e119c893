"""What the lesson routes stand on, none of it a lesson: each module one job.

- ``settings.py``: every ``APP_*`` variable, read once at start-up.
- ``query.py``: query parameters read and checked; a bad one is a 400 naming it.
- ``record.py``: the record every lesson answers (where and when its body ran) and its console lines.
- ``clients.py``: the shared HTTP clients, one of each kind per process.
- ``shutdown.py``: a JSON 503 for the requests a graceful shutdown cuts short.
- ``healthz.py``: ``GET /healthz``, what the process holds right now.
"""
