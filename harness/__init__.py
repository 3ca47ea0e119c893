"""How the tests, the benchmark and the screenshot meet the app: a real server, raw HTTP, a real browser.

- ``servers.py``: uvicorn on a loopback port, in a thread or as a command; raw GETs. No pytest in it.
- ``browser.py``: finding and starting Chromium for Playwright.
"""
