"""Images for the image tests, made locally with PIL, and a tiny HTTP server on 127.0.0.1
that serves them (and misbehaves on purpose: missing files, stalls, redirects away)."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


def make_image(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    """A small RGB image whose pixels depend on `seed` (a gradient plus a coloured square)."""
    width, height = size
    image = Image.new("RGB", size)
    image.putdata(
        [
            ((x * 7 + seed * 40) % 256, (y * 11 + seed * 90) % 256, (x * y + seed * 13) % 256)
            for y in range(height)
            for x in range(width)
        ]
    )
    return image


def encode(image: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


class ImageServer:
    """Serves `files` (path -> (body, content type)) on 127.0.0.1; other paths:

    /stall-body   headers with a Content-Length, then no body until `release()`
    /stall-head   nothing at all until `release()`
    /to-ftp       a redirect to an ftp:// URL
    anything else 404
    """

    def __init__(self, files: dict[str, tuple[bytes, str]]):
        self.files = files
        self.released = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.on_get(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def on_get(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        if path == "/stall-head":
            self.released.wait(60)
            return
        if path == "/stall-body":
            handler.send_response(200)
            handler.send_header("Content-Length", "1000")
            handler.end_headers()
            handler.wfile.flush()
            self.released.wait(60)
            return
        if path == "/to-ftp":
            handler.send_response(302)
            handler.send_header("Location", "ftp://127.0.0.1/a.png")
            handler.end_headers()
            return
        if path not in self.files:
            handler.send_error(404)
            return
        body, content_type = self.files[path]
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        with contextlib.suppress(OSError):  # a client that stopped reading (a size cap)
            handler.wfile.write(body)

    def release(self) -> None:
        self.released.set()


@contextlib.contextmanager
def serving_images(files: dict[str, tuple[bytes, str]]) -> Iterator[ImageServer]:
    """An ImageServer running in a thread for the duration of the block."""
    server = ImageServer(files)
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release()
        server.httpd.shutdown()
        server.httpd.server_close()
        thread.join(timeout=30)
