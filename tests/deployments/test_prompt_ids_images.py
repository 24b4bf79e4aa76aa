"""Prompts with images at the ingress, without Serve: a chat's image parts and TGI's
markdown images become the prompt ids and `MultiModalInput` of the model's own processor;
where the processor does not load, the images go to the replica as they are."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from deployments.generation import ModelInfo
from deployments.prompt_ids import PromptIds
from deployments.protocol import ApiError, ChatCompletionRequest, GenerateRequest
from engine.multimodal import MultiModalProcessor
from tests.deployments.image_fixtures import data_url, encode, make_image

IMAGES = [make_image(1), make_image(2, (30, 50))]


def info_for(path, name: str = "vlm") -> ModelInfo:
    return ModelInfo(
        name, str(path), "cpu", "float32", 1, 128, 4, 520, True, image_placeholder="<image>"
    )


def kwargs_of(info: ModelInfo, prompt=None, **inputs) -> dict:
    return asyncio.run(PromptIds().generate_kwargs(info, prompt, **inputs))


def assert_same_input(a, b) -> None:
    assert a.image_hashes == b.image_hashes and a.placeholder_ranges == b.placeholder_ranges
    assert a.image_sizes == b.image_sizes
    assert all(np.array_equal(x, y) for x, y in zip(a.pixel_values, b.pixel_values, strict=True))


@pytest.fixture(scope="module")
def processor(tiny_llava_next_dir):
    return MultiModalProcessor.load(tiny_llava_next_dir)


def test_chat_image_parts_become_the_processors_ids_and_images(tiny_llava_next_dir, processor):
    urls = [data_url(encode(image)) for image in IMAGES]
    request = ChatCompletionRequest.model_validate(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": urls[0]}},
                        {"type": "text", "text": "and"},
                        {"type": "image_url", "image_url": {"url": urls[1]}},
                    ],
                }
            ]
        }
    )
    kwargs = kwargs_of(
        info_for(tiny_llava_next_dir), messages=request.conversation(), images=IMAGES
    )
    ids, expected = processor.process_chat(request.conversation(), IMAGES)
    assert kwargs["prompt"] == ids and set(kwargs) == {"prompt", "multi_modal"}
    assert_same_input(kwargs["multi_modal"], expected)
    assert expected.num_images == 2


def test_tgi_markdown_images_become_placeholders(tiny_llava_next_dir, processor):
    url = data_url(encode(IMAGES[0]))
    request = GenerateRequest.model_validate(
        {"inputs": f"![]({url})What is this? ![](http://x/y.png)"}
    )
    assert request.image_urls() == [("inputs.images.0", url), ("inputs.images.1", "http://x/y.png")]
    prompt = request.prompt_with(processor.image_placeholder)
    assert prompt == "<image>What is this? <image>"
    kwargs = kwargs_of(info_for(tiny_llava_next_dir), prompt, images=IMAGES)
    ids, expected = processor.process(prompt, IMAGES)
    assert kwargs["prompt"] == ids
    assert_same_input(kwargs["multi_modal"], expected)
    # An alt text makes it plain text, as in TGI.
    assert GenerateRequest.model_validate({"inputs": "![a cat](http://x/y.png)"}).image_urls() == []


def test_bad_prompts_with_images_are_400s_naming_the_input(tiny_llava_next_dir, processor):
    info = info_for(tiny_llava_next_dir)
    with pytest.raises(ApiError) as error:  # one placeholder typed by hand, two images
        kwargs_of(info, "<image> <image> <image>", images=IMAGES)
    assert error.value.status == 400 and error.value.param == "prompt"
    with pytest.raises(ApiError) as error:
        kwargs_of(info, [1, 2, 3], images=IMAGES[:1])
    assert error.value.param == "prompt" and "token ids" in error.value.message
    ids, _ = processor.process("<image>hi", IMAGES[:1])
    with pytest.raises(ApiError) as error:
        kwargs_of(info, "<image>hi", truncate=len(ids) - 1, images=IMAGES[:1])
    assert error.value.param == "truncate" and "would cut" in error.value.message
    assert kwargs_of(info, "<image>hi", truncate=len(ids), images=IMAGES[:1])["prompt"] == ids


def test_without_the_processor_here_images_go_to_the_replica(tmp_path, caplog):
    info = info_for(tmp_path / "absent")
    with caplog.at_level(logging.WARNING, logger="deployments.prompt_ids"):
        kwargs = kwargs_of(info, "<image>hi", truncate=5, images=IMAGES[:1])
    assert kwargs == {"prompt": "<image>hi", "truncate": 5, "images": IMAGES[:1]}
    assert "no image processor loads" in caplog.text
