"""After ``fork()``, only the forking thread exists in the child: a lock another thread held
stays locked there forever, and threads and their pipes belong to the parent. Parts that
hold such things register a method here, and the child runs each one right after the
fork (``os.register_at_fork``), so a monitor or session manager made before a gunicorn
fork keeps working in the worker. Held weakly: registering keeps nothing alive.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable

_HOOKS: list[weakref.WeakMethod[Callable[[], None]]] = []
_LOCK = threading.Lock()


def after_fork_in_child(method: Callable[[], None]) -> None:
    """Run the bound ``method`` in every child forked from now on."""
    with _LOCK:
        _HOOKS[:] = [ref for ref in _HOOKS if ref() is not None]
        _HOOKS.append(weakref.WeakMethod(method))


def _run_hooks() -> None:
    global _LOCK  # this module's own lock may have been held at the fork too
    _LOCK = threading.Lock()
    for ref in list(_HOOKS):
        method = ref()
        if method is not None:
            method()


os.register_at_fork(after_in_child=_run_hooks)
