"""The Gradio helper with real Gradio: a launched app on 127.0.0.1, called through Gradio's
own client and queue. The reservation is held while the queued function runs (plain and
generator), and a refusal reaches the user as Gradio's error with when to retry."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine

import gradio as gr
import gradio_client
import pytest

from pathoai_memobs import MemoryConfig, MemoryMonitor
from pathoai_memobs.exceptions import InsufficientMemoryError
from pathoai_memobs.integrations.gradio import refusal_message, reserving

from .scripted import Scripted

MIB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def served() -> Iterator[tuple[Any, MemoryMonitor, Scripted, list[int]]]:
    memory = Scripted(2000 * MIB)
    monitor = MemoryMonitor(MemoryConfig(), sampler=memory)
    held: list[int] = []

    @reserving(monitor, 800, wait_s=0)
    def segment(x: float) -> float:
        held.append(monitor.reserved_bytes)
        return x * 2

    @reserving(monitor, lambda n: 100 * n, wait_s=0)
    def tiles(n: float) -> Iterator[str]:
        for i in range(int(n)):
            held.append(monitor.reserved_bytes)
            yield f"tile {i}"

    with gr.Blocks() as demo:
        number = gr.Number()
        out = gr.Number()
        text = gr.Textbox()
        gr.Button("segment").click(segment, number, out, api_name="segment")
        gr.Button("tiles").click(tiles, number, text, api_name="tiles")
    port = free_port()
    demo.queue().launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True
    )
    client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
    try:
        yield client, monitor, memory, held
    finally:
        demo.close()


def test_the_queued_function_holds_its_reservation_while_it_runs(
    served: tuple[Any, MemoryMonitor, Scripted, list[int]],
) -> None:
    client, monitor, _, held = served
    assert client.predict(21, api_name="/segment") == 42
    assert held == [800 * MIB]  # held inside the queued function
    assert monitor.reserved_bytes == 0  # and given back when it returned
    held.clear()
    assert client.predict(3, api_name="/tiles") == "tile 2"  # a generator: the last output
    assert held == [300 * MIB] * 3  # sized from its argument, held across every yield
    assert monitor.reserved_bytes == 0


def test_a_refusal_reaches_the_user_as_gradios_error_with_when_to_retry(
    served: tuple[Any, MemoryMonitor, Scripted, list[int]],
) -> None:
    client, monitor, memory, held = served
    memory.available = 900 * MIB  # 800 MiB above a 500 MiB floor do not fit
    with pytest.raises(Exception, match="short of memory right now; please try again in") as e:
        client.predict(21, api_name="/segment")
    assert type(e.value).__name__ == "AppError"  # Gradio's error, shown as it shows its own
    assert held == [] and monitor.requests_rejected_total == 1


def test_the_message_and_bad_sizes() -> None:
    exc = InsufficientMemoryError(800, 400, retry_after_s=7)
    assert refusal_message(exc) == (
        "The service is short of memory right now; please try again in 7 s."
    )
    monitor = MemoryMonitor(MemoryConfig(), sampler=Scripted(2000 * MIB))
    with pytest.raises(TypeError, match="mb must be a number"):
        reserving(monitor, "800")  # type: ignore[arg-type]
