"""A request's images into PIL images: data: URLs, http URLs fetched from a local server
with a size cap and a deadline, and a 400 naming the image for every way one can be bad."""

from __future__ import annotations

import asyncio
import random

import pytest
from PIL import Image

from deployments.images import (
    DEFAULT_IMAGE_LIMITS,
    ImageLimits,
    ImageSource,
    load_image,
    load_images,
)
from deployments.protocol import ApiError
from tests.deployments.image_fixtures import data_url, encode, make_image, serving_images

FIELD = "messages.0.content.1.image_url"
SMALL = ImageLimits(max_bytes=4000, max_pixels=2500, max_side_px=100, fetch_timeout_s=0.5)


def load(url: str, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> Image.Image:
    return asyncio.run(load_image(ImageSource(url, FIELD), limits))


def refused(url: str, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> ApiError:
    with pytest.raises(ApiError) as info:
        load(url, limits)
    error = info.value
    assert error.status == 400 and error.param == FIELD and error.message.startswith(FIELD)
    return error


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.convert("RGB").tobytes() == b.convert("RGB").tobytes()


@pytest.mark.parametrize(
    ("fmt", "media_type", "save"),
    [
        ("PNG", "image/png", {}),
        ("JPEG", "image/jpeg", {"quality": 95}),
        ("JPEG", "image/jpg", {}),
        ("WEBP", "image/webp", {"lossless": True}),
        ("GIF", "image/gif", {}),
    ],
)
def test_data_urls_of_every_supported_format_decode(fmt, media_type, save):
    original = make_image(1)
    data = encode(original, fmt, **save)
    image = load(data_url(data, media_type))
    assert image.format == fmt and image.size == original.size
    if fmt in ("PNG", "WEBP"):  # lossless
        assert same_pixels(image, original)


def test_the_format_comes_from_the_bytes_not_the_media_type():
    image = load(data_url(encode(make_image(2), "JPEG"), "image/png"))
    assert image.format == "JPEG"


@pytest.mark.parametrize(
    ("url", "code", "words"),
    [
        ("ftp://example.com/a.png", "invalid_image_url", "data: URL"),
        ("file:///etc/hostname", "invalid_image_url", "http(s)"),
        ("/images/a.png", "invalid_image_url", "http(s)"),
        ("http://[::1", "invalid_image_url", "malformed"),
        ("data:image/png,abc", "invalid_image_url", "base64"),
        ("data:image/png;base64", "invalid_image_url", "','"),
        ("data:image/tiff;base64,AAAA", "unsupported_image", "image/tiff"),
        ("data:;base64,AAAA", "unsupported_image", "(none)"),
        ("data:image/png;base64,@@@@", "invalid_image", "base64"),
    ],
)
def test_bad_urls_are_400s_naming_the_image(url, code, words):
    error = refused(url)
    assert error.code == code and words in error.message


def test_corrupt_bytes_are_refused():
    png = encode(make_image(3), "PNG")
    truncated = refused(data_url(png[: len(png) // 2]))
    assert truncated.code == "invalid_image" and "does not decode" in truncated.message
    noise = refused(data_url(b"this is not an image at all"))
    assert noise.code == "unsupported_image" and "PNG, JPEG, WebP or GIF" in noise.message


def test_unsupported_formats_and_animations_are_refused():
    bmp = refused(data_url(encode(make_image(4), "BMP")))
    assert bmp.code == "unsupported_image" and "BMP" in bmp.message
    frames = [make_image(5), make_image(6)]
    out = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    animated = refused(data_url(out, "image/gif"))
    assert animated.code == "unsupported_image" and "animated" in animated.message


def test_size_caps_on_bytes_pixels_and_sides():
    noise = random.Random(0).randbytes(40 * 40 * 3)
    big = encode(Image.frombytes("RGB", (40, 40), noise), "PNG")  # incompressible
    assert len(big) > SMALL.max_bytes
    error = refused(data_url(big), SMALL)
    assert error.code == "image_too_large" and "4000 bytes" in error.message
    many_pixels = encode(Image.new("RGB", (60, 60)), "PNG")  # 3600 > 2500 pixels, few bytes
    error = refused(data_url(many_pixels), SMALL)
    assert error.code == "image_too_large" and "60x60" in error.message
    long_side = encode(Image.new("RGB", (101, 1)), "PNG")
    assert refused(data_url(long_side), SMALL).code == "image_too_large"
    assert load(data_url(encode(Image.new("RGB", (50, 50)), "PNG")), SMALL).size == (50, 50)


def test_at_most_max_images_per_request():
    url = data_url(encode(make_image(8), "PNG"))
    sources = [ImageSource(url, f"inputs.images.{i}") for i in range(3)]
    limits = ImageLimits(max_images=2)
    with pytest.raises(ApiError) as info:
        asyncio.run(load_images(sources, limits))
    assert info.value.status == 400 and info.value.param == "inputs.images.2"
    assert info.value.code == "too_many_images"
    assert len(asyncio.run(load_images(sources[:2], limits))) == 2


def test_http_images_are_fetched_and_failures_named():
    png = encode(make_image(9), "PNG")
    big = bytes(SMALL.max_bytes + 1)
    files = {"/a.png": (png, "image/png"), "/big.bin": (big, "application/octet-stream")}
    with serving_images(files) as server:
        sources = [ImageSource(f"{server.url}/a.png", "x"), ImageSource(data_url(png), "y")]
        images = asyncio.run(load_images(sources))
        assert all(same_pixels(image, make_image(9)) for image in images)

        missing = refused(f"{server.url}/missing.png")
        assert missing.code == "image_fetch_failed" and "HTTP 404" in missing.message
        too_big = refused(f"{server.url}/big.bin", SMALL)
        assert too_big.code == "image_too_large"
        stalled_head = refused(f"{server.url}/stall-head", SMALL)
        assert stalled_head.code == "image_fetch_failed" and "0.5 s" in stalled_head.message
        stalled_body = refused(f"{server.url}/stall-body", SMALL)
        assert stalled_body.code == "image_fetch_failed" and "0.5 s" in stalled_body.message
        redirected = refused(f"{server.url}/to-ftp")
        assert redirected.code == "image_fetch_failed" and "non-http(s)" in redirected.message
        server.release()
    refused_connection = refused(f"{server.url}/a.png")  # the server is gone
    assert refused_connection.code == "image_fetch_failed"
