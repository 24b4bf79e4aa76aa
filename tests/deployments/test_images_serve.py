"""Images through the HTTP APIs, over real HTTP on 127.0.0.1: a real Serve app with a tiny
Llava-NeXT ("vlm", the TGI default) and a tiny text-only model ("text"); the official
`openai` and `text_generation` clients send images as data: URLs and as http URLs served
by a local http.server, and get the offline engine's tokens; every bad image is a 400
naming its place in the request."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from PIL import Image
from ray import serve
from text_generation import Client as TgiClient

from deployments.config import APP_NAME
from deployments.generation import GenerationChunk, InvalidRequestError
from engine import SamplingParams
from engine.multimodal import MultiModalProcessor
from tests.deployments.image_fixtures import data_url, encode, make_image, serving_images
from tests.deployments.serve_fixtures import free_port, model_entry, offline_llm, running_app

CAT, DOG = make_image(1), make_image(2, (50, 30))
QUESTION = "What is in the picture?"
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def images_url():
    files = {
        "/cat.png": (encode(CAT), "image/png"),
        "/big.png": (bytes(21 * 2**20), "image/png"),  # over the 20 MiB cap
        "/notes.txt": (b"not an image", "text/plain"),
    }
    with serving_images(files) as server:
        yield server.url


@pytest.fixture(scope="module")
def base_url(tiny_llava_next_dir, tiny_mllama_dir, tiny_model_dir):
    models = [
        model_entry("vlm", tiny_llava_next_dir),
        model_entry("text", tiny_model_dir("llama")),
        model_entry("mllama", tiny_mllama_dir),
    ]
    with running_app(models) as url:
        yield url


@pytest.fixture(scope="module")
def offline(tiny_llava_next_dir):
    llm = offline_llm(tiny_llava_next_dir)
    yield llm
    llm.shutdown()


@pytest.fixture(scope="module")
def processor(tiny_llava_next_dir):
    return MultiModalProcessor.load(tiny_llava_next_dir)


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def chat(url: str, text: str = QUESTION) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return [{"role": "user", "content": parts}]


def offline_text(llm, prompt: str, images: list[Image.Image], ignore_eos: bool = True) -> str:
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=ignore_eos)
    request = {"prompt": prompt, "multi_modal_data": {"image": images}}
    return llm.generate([request], params)[0].text


def chat_prompt(processor, messages: list[dict]) -> str:
    """The chat's text as the model's template writes it, an image placeholder per image."""
    parts = [{"type": "image"} if p["type"] == "image_url" else p for p in messages[0]["content"]]
    return processor.hf_processor.apply_chat_template(
        [{"role": "user", "content": parts}], add_generation_prompt=True, tokenize=False
    )


# -- the offline engine's tokens ---------------------------------------------------------
def test_openai_chat_with_a_data_url_and_an_http_url_equals_offline(
    client, offline, processor, images_url
):
    messages = chat(data_url(encode(CAT)))
    prompt = chat_prompt(processor, messages)
    expected = offline_text(offline, prompt, [CAT])
    by_data = client.chat.completions.create(
        model="vlm", messages=messages, max_tokens=MAX_TOKENS, **GREEDY
    )
    assert by_data.choices[0].message.content == expected
    assert by_data.usage.prompt_tokens == len(processor.process(prompt, [CAT])[0])
    by_http = client.chat.completions.create(
        model="vlm", messages=chat(f"{images_url}/cat.png"), max_tokens=MAX_TOKENS, **GREEDY
    )
    assert by_http.choices[0].message.content == expected
    # the same image and text again hit the prefix cache
    assert by_http.usage.prompt_tokens_details.cached_tokens > 0

    stream = client.chat.completions.create(
        model="vlm", messages=messages, max_tokens=MAX_TOKENS, stream=True, **GREEDY
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == expected


def test_llama_3_2_vision_over_openai_chat_and_tgi_equals_offline(
    client, base_url, tiny_mllama_dir, images_url
):
    """The cross-attention architecture behind the same routes: an image as a data: URL
    and as an http URL, in an OpenAI chat and in TGI's markdown (`?model=` picks it)."""
    processor = MultiModalProcessor.load(tiny_mllama_dir)
    messages = chat(data_url(encode(CAT)))
    tgi_prompt = f"{processor.image_placeholder}{QUESTION}"
    llm = offline_llm(tiny_mllama_dir)
    try:
        expected = offline_text(llm, chat_prompt(processor, messages), [CAT])
        # The TGI API cannot ask to ignore EOS: greedy with EOS honoured.
        expected_tgi = offline_text(llm, tgi_prompt, [CAT], ignore_eos=False)
    finally:
        llm.shutdown()
    for image in (data_url(encode(CAT)), f"{images_url}/cat.png"):
        body = {"inputs": f"![]({image}){QUESTION}", "parameters": {"max_new_tokens": MAX_TOKENS}}
        r = httpx.post(f"{base_url}/generate", params={"model": "mllama"}, json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["generated_text"] == expected_tgi
    response = client.chat.completions.create(
        model="mllama", messages=messages, max_tokens=MAX_TOKENS, **GREEDY
    )
    assert response.choices[0].message.content == expected
    by_http = client.chat.completions.create(
        model="mllama", messages=chat(f"{images_url}/cat.png"), max_tokens=MAX_TOKENS, **GREEDY
    )
    assert by_http.choices[0].message.content == expected


def test_another_image_with_the_same_text_shares_no_image_block(client, offline, processor):
    messages = chat(data_url(encode(DOG)))
    expected = offline_text(offline, chat_prompt(processor, messages), [DOG])
    response = client.chat.completions.create(
        model="vlm", messages=messages, max_tokens=MAX_TOKENS, **GREEDY
    )
    assert response.choices[0].message.content == expected
    _, multi_modal = processor.process(chat_prompt(processor, messages), [DOG])
    first_image_token = multi_modal.placeholder_ranges[0][0]
    cached = response.usage.prompt_tokens_details
    assert (cached.cached_tokens if cached else 0) <= first_image_token


def test_tgi_client_with_markdown_images_equals_offline(base_url, offline, images_url):
    tgi = TgiClient(base_url, timeout=60)
    # The TGI client cannot ask to ignore EOS: compare against greedy with EOS honoured.
    expected = offline_text(offline, f"<image>{QUESTION}", [CAT], ignore_eos=False)
    by_data = tgi.generate(f"![]({data_url(encode(CAT))}){QUESTION}", max_new_tokens=MAX_TOKENS)
    assert by_data.generated_text == expected
    markdown = f"![]({images_url}/cat.png){QUESTION}"
    assert tgi.generate(markdown, max_new_tokens=MAX_TOKENS).generated_text == expected
    events = list(tgi.generate_stream(markdown, max_new_tokens=MAX_TOKENS))
    assert events[-1].generated_text == expected


def test_models_and_info_say_which_models_take_images(client, base_url):
    modalities = {m.id: m.input_modalities for m in client.models.list()}
    assert modalities == {"vlm": ["text", "image"], "text": ["text"], "mllama": ["text", "image"]}
    info = httpx.get(f"{base_url}/info", timeout=30).json()
    assert info["model_id"] == "vlm" and info["model_pipeline_tag"] == "image-text-to-text"
    info = httpx.get(f"{base_url}/info?model=text", timeout=30).json()
    assert info["model_pipeline_tag"] == "text-generation"


def test_a_text_only_model_given_an_image_is_a_400_naming_it(client, base_url):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(
            model="text", messages=chat(data_url(encode(CAT))), max_tokens=2
        )
    assert error.value.body["param"] == "messages.0.content.0.image_url"
    assert "model 'text' takes text only" in error.value.body["message"]
    body = {"inputs": f"![]({data_url(encode(CAT))})hi"}
    r = httpx.post(f"{base_url}/generate?model=text", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error_type"] == "validation"
    assert "model 'text' takes text only" in r.json()["error"]


def test_the_replica_processes_images_the_ingress_could_not(base_url, offline):
    """Where the processor does not load at the ingress, images go to the replica with the
    text or messages (deployments.prompt_ids): the replica processes them alike."""

    async def generate(model: str, **kwargs) -> list[GenerationChunk]:
        handle = serve.get_deployment_handle(model, APP_NAME).options(stream=True)
        return [c async for c in handle.generate.remote(**kwargs)]

    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    prompt = f"<image>{QUESTION}"
    chunks = asyncio.run(generate("vlm", prompt=prompt, params=params, images=[CAT]))
    assert "".join(c.text for c in chunks) == offline_text(offline, prompt, [CAT])
    with pytest.raises(InvalidRequestError) as error:
        asyncio.run(generate("text", prompt=prompt, params=params, images=[CAT]))
    assert "model 'text' takes text only" in str(error.value)


# -- bad images ----------------------------------------------------------------------------
PNG = encode(CAT)
FRAMES = [make_image(3), make_image(4)]
BAD_IMAGES = [
    # (url, or a path on the image server; the error code; words of the message)
    (data_url(PNG[: len(PNG) // 2]), "invalid_image", "does not decode"),
    (data_url(b"plain text"), "unsupported_image", "PNG, JPEG, WebP or GIF"),
    (data_url(encode(CAT, "BMP")), "unsupported_image", "BMP"),
    ("data:image/tiff;base64,AAAA", "unsupported_image", "image/tiff"),
    ("data:image/png;base64,@@", "invalid_image", "base64"),
    (data_url(encode(Image.new("1", (6000, 6000)))), "image_too_large", "6000x6000"),
    (data_url(encode(Image.new("1", (17000, 1)))), "image_too_large", "17000x1"),
    (
        data_url(encode(FRAMES[0], "GIF", save_all=True, append_images=FRAMES[1:]), "image/gif"),
        "unsupported_image",
        "animated",
    ),
    ("ftp://127.0.0.1/cat.png", "invalid_image_url", "http(s)"),
    ("file:///etc/hostname", "invalid_image_url", "http(s)"),
    ("/big.png", "image_too_large", "20971520 bytes"),
    ("/missing.png", "image_fetch_failed", "HTTP 404"),
    ("/notes.txt", "unsupported_image", "PNG, JPEG, WebP or GIF"),
    ("/stall-head", "image_fetch_failed", "within 10 s"),
    (f"http://127.0.0.1:{free_port()}/cat.png", "image_fetch_failed", "refused"),
]


@pytest.mark.parametrize(("url", "code", "words"), BAD_IMAGES)
def test_openai_bad_images_are_400s_naming_the_part(base_url, images_url, url, code, words):
    url = f"{images_url}{url}" if url.startswith("/") else url
    messages = chat(data_url(encode(DOG)))
    messages[0]["content"].append({"type": "image_url", "image_url": {"url": url}})
    body = {"model": "vlm", "messages": messages, "max_tokens": 2}
    r = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "messages.0.content.2.image_url" and error["code"] == code
    assert words in error["message"] and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("url", "code", "words"), [BAD_IMAGES[0], BAD_IMAGES[11]])
def test_tgi_bad_images_are_400s_naming_the_image(base_url, images_url, url, code, words):
    url = f"{images_url}{url}" if url.startswith("/") else url
    body = {"inputs": f"![]({data_url(encode(DOG))}) and ![]({url})"}
    r = httpx.post(f"{base_url}/generate", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error_type"] == "validation"
    assert r.json()["error"].startswith("inputs.images.1: ") and words in r.json()["error"]


def test_too_many_images_are_a_400(base_url):
    messages = chat(data_url(encode(DOG)))
    messages[0]["content"] *= 9
    body = {"model": "vlm", "messages": messages, "max_tokens": 2}
    r = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_images"
    assert r.json()["error"]["param"] == "messages.0.content.16.image_url"
