"""MultiModalProcessor: prompt ids and MultiModalInput from the model's own processor."""

from __future__ import annotations

import pickle

import pytest

from engine.multimodal import MultiModalInput, MultiModalProcessor
from tests.conftest import tiny_images


def test_text_only_model_has_no_processor(tiny_model_dir):
    assert MultiModalProcessor.load(tiny_model_dir("llama")) is None


def test_process_expands_placeholders_and_keeps_real_patches(tiny_llava_next_dir):
    processor = MultiModalProcessor.load(tiny_llava_next_dir)
    assert processor.image_placeholder == "<image>"
    images = tiny_images([(30, 60), (50, 40), (20, 20)])
    ids, mm = processor.process("hi <image> and <image><image> end", images)
    expected = processor.hf_processor(
        text="hi <image> and <image><image> end", images=images, return_tensors="np"
    )
    assert ids == expected["input_ids"][0].tolist()
    assert mm.num_images == 3
    # adjacent images: one run of image tokens, cut by each image's count
    (s0, n0), (s1, n1), (s2, n2) = mm.placeholder_ranges
    assert s1 + n1 == s2 and all(t == processor.image_token_id for t in ids[s0 : s0 + n0])
    assert sum(ids.count(processor.image_token_id) for _ in [0]) == n0 + n1 + n2
    assert [v.shape[0] for v in mm.pixel_values] == [3, 5, 3]  # base + anyres tiles
    assert mm.image_sizes == ((30, 60), (50, 40), (20, 20))
    assert len(set(mm.image_hashes)) == 3
    again = pickle.loads(pickle.dumps(mm))
    assert isinstance(again, MultiModalInput) and again.image_hashes == mm.image_hashes


def test_process_chat_applies_the_template(tiny_llava_next_dir):
    processor = MultiModalProcessor.load(tiny_llava_next_dir)
    (image,) = tiny_images([(30, 60)])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}]
    ids, mm = processor.process_chat(messages, [image])
    text = "user: <image>\n?\nassistant:"
    assert (ids, mm.image_hashes) == (
        processor.process(text, [image], add_special_tokens=False)[0],
        processor.process(text, [image])[1].image_hashes,
    )


@pytest.mark.parametrize(
    ("text", "images", "match"),
    [
        ("a <image>", [], "0 image"),
        ("a", "one", r'multi_modal_data\["image"\] must be a PIL'),
        ("a <image> <image>", "one", "2 '<image>' placeholder"),
    ],
)
def test_bad_inputs_name_the_field(tiny_llava_next_dir, text, images, match):
    processor = MultiModalProcessor.load(tiny_llava_next_dir)
    if images == "one":
        images = tiny_images([(20, 20)])
        if match.startswith("multi"):
            images = [images[0], 3]
    with pytest.raises(ValueError, match=match):
        processor.process(text, images)


def test_interface_names_load_no_torch():
    """The ingress imports these beside the prefix hash without torch."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from engine import MultiModalInput, MultiModalProcessor, prefix_block_hashes\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
