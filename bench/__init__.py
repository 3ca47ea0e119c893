"""The benchmark: ``python -m bench`` (see ``bench/__main__.py``).

- ``variants.py``: what is served beside the app (its plain-Starlette twin, it without timing, with
  ``BaseHTTPMiddleware``, without console lines, a bare ASGI callable);
  ``fastapi_twin.py``: the pings the FastAPI way, with the app's own bodies.
- ``load.py``: the load (raw GET batches, wrk) and CPU pinning.
- ``measure.py``: the four measurements on one stack.
- ``report.py`` and ``plot.py``: the text report with its targets, and the charts.
"""
