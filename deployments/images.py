"""A request's images, from where the client put them to decoded PIL images.

Two sources are taken: `data:` URLs (`data:image/png;base64,...`) and http(s) URLs, fetched
in a worker thread (the event loop never waits on a socket) with a byte cap and a deadline.
Formats: PNG, JPEG, WebP and GIF, still images only (OpenAI's list); the format is read from
the bytes, not from a media type. Every failure is an `ApiError` 400 whose `param` names
the image's place in the request (e.g. ``messages.0.content.1.image_url``) and whose
`code` says what kind of failure it was:

    invalid_image_url   a scheme other than data/http/https, a malformed data: URL
    image_fetch_failed  the URL answered an error status, could not be reached, timed out
    image_too_large     over ImageLimits' bytes, pixels or side length
    unsupported_image   not one of the formats above, or animated
    invalid_image       bytes that do not decode (truncated, corrupt)

NOTE: the ingress fetches any http(s) URL it is given, private addresses included; put it
behind an egress policy where clients are not trusted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import http.client
import io
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from deployments.protocol import ApiError

if TYPE_CHECKING:
    from PIL.Image import Image

MiB = 2**20
# PIL's format name -> the media types a data: URL may give for it
SUPPORTED_FORMATS = {
    "PNG": ("image/png",),
    "JPEG": ("image/jpeg", "image/jpg"),
    "WEBP": ("image/webp",),
    "GIF": ("image/gif",),
    "MPO": (),  # a camera's JPEG with extra frames (depth, thumbnails): the first is read
}
_MEDIA_TYPES = {t: name for name, types in SUPPORTED_FORMATS.items() for t in types}
_FORMAT_NAMES = "PNG, JPEG, WebP or GIF (still images)"
FETCH_CHUNK_BYTES = MiB
USER_AGENT = "gaudi-serve"
# The event loop gives a fetch this long past its deadline before answering without it:
# the worker thread checks the deadline between reads, each bounded by the socket timeout.
FETCH_GRACE_S = 0.5


@dataclass(frozen=True)
class ImageLimits:
    """Caps on one request's images (defaults: what the served app uses).

    max_bytes: encoded size of one image (a data: URL's decoded payload, a fetched body).
    max_pixels, max_side_px: decoded size of one image, width * height and either side.
    max_images: images in one request.
    fetch_timeout_s: the longest an http(s) image takes, connecting to the last byte.
    """

    max_bytes: int = 20 * MiB
    max_pixels: int = 32 * MiB  # 33,554,432 pixels: a 48-megapixel photo is refused
    max_side_px: int = 16384
    max_images: int = 8
    fetch_timeout_s: float = 10.0


DEFAULT_IMAGE_LIMITS = ImageLimits()


@dataclass(frozen=True)
class ImageSource:
    """One image of a request: its URL and where it sits in the request (`field`)."""

    url: str
    field: str


async def load_images(
    sources: Sequence[ImageSource], limits: ImageLimits = DEFAULT_IMAGE_LIMITS
) -> list[Image]:
    """The images, decoded, in order; fetched and decoded concurrently. Raises ApiError 400
    naming the first image that failed (see the module doc) or too many images."""
    if len(sources) > limits.max_images:
        field = sources[limits.max_images].field
        message = (
            f"{field}: a request may hold at most {limits.max_images} images, got {len(sources)}"
        )
        raise ApiError(400, message, field, code="too_many_images")
    return list(await asyncio.gather(*(load_image(s, limits) for s in sources)))


async def load_image(source: ImageSource, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> Image:
    """One image, fetched or unpacked and then decoded in a worker thread."""
    data = await image_bytes(source, limits)
    return await asyncio.to_thread(decode_image, data, source.field, limits)


async def image_bytes(source: ImageSource, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> bytes:
    """The encoded image a data: or http(s) URL holds."""
    try:
        scheme = urlsplit(source.url).scheme.lower()
    except ValueError as exc:
        raise _error(source.field, f"malformed URL: {exc}", "invalid_image_url") from None
    if scheme == "data":
        return data_url_bytes(source.url, source.field, limits)
    if scheme in ("http", "https"):
        return await fetch(source.url, source.field, limits)
    raise _error(
        source.field,
        f"the image URL must be a data: URL (data:image/png;base64,...) or an http(s) URL, "
        f"got {_short(source.url)}",
        "invalid_image_url",
    )


def data_url_bytes(url: str, field: str, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> bytes:
    """The payload of a base64 `data:<image type>;base64,<data>` URL."""
    header, comma, payload = url.partition(",")
    if not comma:
        raise _error(field, "a data: URL needs a ',' before its data", "invalid_image_url")
    media_type, *params = header[len("data:") :].split(";")
    if "base64" not in (p.strip().lower() for p in params):
        message = "a data: URL must be base64-encoded (data:image/png;base64,...)"
        raise _error(field, message, "invalid_image_url")
    media_type = media_type.strip().lower()
    if media_type not in _MEDIA_TYPES:
        allowed = ", ".join(_MEDIA_TYPES)
        message = f"unsupported image type {media_type or '(none)'!r}: send one of {allowed}"
        raise _error(field, message, "unsupported_image")
    if len(payload) * 3 // 4 > limits.max_bytes + 2:  # base64: 4 characters per 3 bytes
        raise _too_many_bytes(field, len(payload) * 3 // 4, limits)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _error(field, f"the data: URL is not valid base64 ({exc})", "invalid_image") from None
    if len(data) > limits.max_bytes:
        raise _too_many_bytes(field, len(data), limits)
    return data


async def fetch(url: str, field: str, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> bytes:
    """The body at an http(s) URL, read in a worker thread; at most limits.max_bytes, within
    limits.fetch_timeout_s (redirects followed, to http(s) only)."""
    timeout_s = limits.fetch_timeout_s
    deadline = time.monotonic() + timeout_s
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(_fetch_blocking, url, field, deadline, limits),
            timeout_s + FETCH_GRACE_S,
        )
    except asyncio.TimeoutError:
        raise _timed_out(url, field, timeout_s) from None


def _fetch_blocking(url: str, field: str, deadline: float, limits: ImageLimits) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with _OPENER.open(request, timeout=_remaining_s(deadline, url, field, limits)) as reply:
            length = reply.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > limits.max_bytes:
                raise _too_many_bytes(field, int(length), limits)
            body = bytearray()
            while chunk := reply.read(FETCH_CHUNK_BYTES):
                body += chunk
                if len(body) > limits.max_bytes:
                    raise _too_many_bytes(field, len(body), limits, at_least=True)
                _remaining_s(deadline, url, field, limits)
            return bytes(body)
    except ApiError:
        raise
    except urllib.error.HTTPError as exc:
        message = f"fetching {_short(url)} answered HTTP {exc.code} {exc.reason}"
        raise _error(field, message, "image_fetch_failed") from None
    except TimeoutError:
        raise _timed_out(url, field, limits.fetch_timeout_s) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise _timed_out(url, field, limits.fetch_timeout_s) from None
        message = f"fetching {_short(url)} failed: {exc.reason}"
        raise _error(field, message, "image_fetch_failed") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        message = f"fetching {_short(url)} failed: {type(exc).__name__}: {exc}"
        raise _error(field, message, "image_fetch_failed") from None


def _remaining_s(deadline: float, url: str, field: str, limits: ImageLimits) -> float:
    remaining_s = deadline - time.monotonic()
    if remaining_s <= 0:
        raise _timed_out(url, field, limits.fetch_timeout_s)
    return remaining_s


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) URLs only (urllib's own also follows ftp)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.URLError(f"redirected to a non-http(s) URL {_short(newurl)}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpRedirectsOnly)


def decode_image(data: bytes, field: str, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> Image:
    """The decoded image (blocking: call it in a worker thread). Checks the format and the
    size from the header before decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise _error(field, f"the image is too large: {exc}", "image_too_large") from None
    except UnidentifiedImageError:
        message = f"the bytes are not a {_FORMAT_NAMES} image ({len(data)} bytes)"
        raise _error(field, message, "unsupported_image") from None
    if image.format not in SUPPORTED_FORMATS:
        message = f"unsupported image format {image.format}: send a {_FORMAT_NAMES} image"
        raise _error(field, message, "unsupported_image")
    width, height = image.size
    if max(width, height) > limits.max_side_px or width * height > limits.max_pixels:
        message = (
            f"the image is {width}x{height} pixels; at most {limits.max_pixels} pixels and "
            f"{limits.max_side_px} a side are accepted"
        )
        raise _error(field, message, "image_too_large")
    if image.format != "MPO" and getattr(image, "n_frames", 1) > 1:
        message = f"animated images are not supported ({image.format}, {image.n_frames} frames)"
        raise _error(field, message, "unsupported_image")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        message = f"the {image.format} image does not decode: {exc}"
        raise _error(field, message, "invalid_image") from None
    return image


def _error(field: str, reason: str, code: str) -> ApiError:
    return ApiError(400, f"{field}: {reason}", field, code=code)


def _too_many_bytes(
    field: str, num_bytes: int, limits: ImageLimits, at_least: bool = False
) -> ApiError:
    size = f"{'over ' if at_least else ''}{num_bytes} bytes"
    message = f"the image is {size}; at most {limits.max_bytes} bytes are accepted"
    return _error(field, message, "image_too_large")


def _timed_out(url: str, field: str, timeout_s: float) -> ApiError:
    message = f"fetching {_short(url)} did not finish within {timeout_s:g} s"
    return _error(field, message, "image_fetch_failed")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
