"""Admission middleware for web apps: 503 with Retry-After when memory is short.

``asgi.MemoryAdmissionMiddleware`` (Starlette, FastAPI, Gradio) and
``wsgi.MemoryAdmissionMiddleware`` (Flask, Django, gunicorn sync workers) hold a
``MemoryMonitor.reserve`` for the duration of each request to a route the app marks
with the memory it needs; other routes pass through untouched.
"""

from .routes import RouteTable

__all__ = ["RouteTable"]
