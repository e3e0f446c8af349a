"""Admission middleware for web apps: 503 with Retry-After when memory is short.

``asgi.MemoryAdmissionMiddleware`` (Starlette, FastAPI, Gradio) and
``wsgi.MemoryAdmissionMiddleware`` (Flask, Django, gunicorn sync workers) hold a
``MemoryMonitor.reserve`` for the duration of each request to a route the app marks
with the memory it needs (MiB, or a ``Need`` with GPU MiB on a device); other routes pass
through untouched.
"""

from .routes import Need, RouteTable

__all__ = ["Need", "RouteTable"]
