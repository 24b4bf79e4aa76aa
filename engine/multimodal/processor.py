"""Prompts with images to token ids and a `MultiModalInput`: the model's own processor.

The ingress and `LLM.generate` both call `MultiModalProcessor.process` (or `process_chat`),
so the replica receives the ids and the processed images it does not process again.
Importing this module loads neither torch nor transformers; `load` loads the processor
(transformers, pillow): Llava-NeXT's `LlavaNextImageProcessorPil` or Llama 3.2 Vision's
`MllamaImageProcessorPil`, which need no torchvision.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.multimodal.hashing import image_hash, processor_fingerprint
from engine.multimodal.inputs import MultiModalInput

__all__ = ["MultiModalProcessor", "check_images"]


def check_images(images: Any, where: str = 'multi_modal_data["image"]') -> list[Any]:
    """`images` as a list of PIL images (one image or a list of them). Raises ValueError
    naming `where` for anything else."""
    from PIL import Image

    items = images if isinstance(images, list | tuple) else [images]
    for i, image in enumerate(items):
        if not isinstance(image, Image.Image):
            raise ValueError(
                f"{where} must be a PIL.Image.Image or a list of them, got "
                f"{type(image).__name__} at index {i}"
            )
    return list(items)


class MultiModalProcessor:
    """Token ids and processed images of a prompt, for one multimodal model::

        processor = MultiModalProcessor.load(model_dir)   # None for a text-only model
        ids, mm = processor.process("USER: <image>\\nWhat is it?", [pil_image])
        engine.add_request("r1", ids, params, multi_modal=mm)

    Safe to call from several threads at once (it never changes the processor's settings).
    """

    def __init__(self, hf_processor: Any, model_type: str):
        self.hf_processor = hf_processor
        self.model_type = model_type
        self.image_placeholder: str = hf_processor.image_token
        self.image_token_id: int = hf_processor.image_token_id
        image_processor = hf_processor.image_processor
        from engine.families import get_family

        # a cross-attention model (Llama 3.2 Vision): one image token per image, its tiles
        self.family = get_family(model_type)
        self.is_cross_attention = self.family.cross_attention is not None
        if not self.is_cross_attention:
            self._crop = _crop_size(image_processor)
            self._pinpoints = [list(p) for p in image_processor.image_grid_pinpoints]
        self._fingerprint = processor_fingerprint(
            model_type + image_processor.to_json_string() + str(self.image_placeholder)
        )

    @staticmethod
    def load(model_path: str | Path) -> MultiModalProcessor | None:
        """The processor of the model in folder `model_path`; None for a text-only model.
        Raises UnsupportedModelError for a model_type the engine does not run."""
        from engine.families import get_family

        path = Path(model_path)
        model_type = json.loads((path / "config.json").read_text())["model_type"]
        if not get_family(model_type, where=path).is_multimodal:
            return None
        from transformers import AutoProcessor

        # NOTE: the PIL backend: torchvision does not import beside the CPU torch build,
        # and the PIL processor is the one transformers' own tests compare against.
        return MultiModalProcessor(AutoProcessor.from_pretrained(path, backend="pil"), model_type)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf_processor, "chat_template", None))

    def process(
        self, text: str, images: list[Any], *, add_special_tokens: bool = True
    ) -> tuple[list[int], MultiModalInput]:
        """Prompt ids of `text`, each image placeholder expanded to the image's tokens, and
        the processed images. `text` holds `image_placeholder` once per image. Raises
        ValueError naming the field for a bad input."""
        if not isinstance(text, str):
            raise ValueError(f"prompt must be a string, got {type(text).__name__}")
        images = check_images(images)
        num_placeholders = text.count(self.image_placeholder)
        if num_placeholders != len(images):
            raise ValueError(
                f'multi_modal_data["image"] has {len(images)} image(s) but the prompt has '
                f"{num_placeholders} {self.image_placeholder!r} placeholder(s); give one "
                "image per placeholder"
            )
        if self.is_cross_attention and len(images) > 1:
            raise ValueError(
                f'multi_modal_data["image"] has {len(images)} images: {self.family.name} '
                f"({self.model_type}) takes at most one image per prompt"
            )
        if not images:
            ids = self.hf_processor.tokenizer.encode(text, add_special_tokens=add_special_tokens)
            return ids, MultiModalInput((), (), (), ())
        out = self.hf_processor(
            text=[text], images=images, return_tensors="np", add_special_tokens=add_special_tokens
        )
        ids = [int(t) for t in out["input_ids"][0]]
        if self.is_cross_attention:
            return ids, self._cross_attention_input(ids, out, images)
        sizes = [(int(h), int(w)) for h, w in out["image_sizes"]]
        pixel_values = [
            out["pixel_values"][i][: self.num_patches(size)] for i, size in enumerate(sizes)
        ]
        counts = self.hf_processor._get_num_multimodal_tokens(image_sizes=sizes).num_image_tokens
        return ids, MultiModalInput(
            image_hashes=tuple(image_hash(im, self._fingerprint) for im in images),
            placeholder_ranges=_placeholder_ranges(ids, self.image_token_id, counts),
            pixel_values=tuple(pixel_values),
            image_sizes=tuple(sizes),
        )

    def _cross_attention_input(
        self, ids: list[int], out: Any, images: list[Any]
    ) -> MultiModalInput:
        """The MultiModalInput of a cross-attention model's processor output: each image's
        token, its real tiles and its tile grid's id."""
        positions = [i for i, t in enumerate(ids) if t == self.image_token_id]
        num_tiles = [int(n) for n in out["aspect_ratio_mask"][0].sum(-1)]
        return MultiModalInput(
            image_hashes=tuple(image_hash(im, self._fingerprint) for im in images),
            placeholder_ranges=tuple((p, 1) for p in positions),
            pixel_values=tuple(out["pixel_values"][0][k][:n] for k, n in enumerate(num_tiles)),
            image_sizes=tuple((im.height, im.width) for im in images),
            aspect_ratio_ids=tuple(int(a) for a in out["aspect_ratio_ids"][0]),
            cross_attention=True,
        )

    def process_chat(
        self, messages: list[dict], images: list[Any]
    ) -> tuple[list[int], MultiModalInput]:
        """`process` of a chat: OpenAI-shaped messages whose content is a string or a list
        of parts ({"type": "text", "text": ...} / {"type": "image"}), images in order of
        appearance, through the model's chat template with the generation prompt."""
        if not self.has_chat_template:
            raise ValueError("messages need a chat template, and this model's processor has none")
        text = self.hf_processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        # The template already wrote any BOS text: encode without adding special tokens.
        return self.process(text, images, add_special_tokens=False)

    def num_patches(self, image_size: tuple[int, int]) -> int:
        """Patches of an image of (height, width): the base image and its anyres tiles."""
        from transformers.image_processing_utils import select_best_resolution

        best_h, best_w = select_best_resolution(list(image_size), self._pinpoints)
        return 1 + (best_h // self._crop[0]) * (best_w // self._crop[1])


def _crop_size(image_processor: Any) -> tuple[int, int]:
    crop = image_processor.crop_size
    get = crop.get if isinstance(crop, dict) else lambda k: getattr(crop, k, None)
    if get("height"):
        return int(get("height")), int(get("width"))
    size = image_processor.size
    edge = size["shortest_edge"] if isinstance(size, dict) else size.shortest_edge
    return int(edge), int(edge)


def _placeholder_ranges(
    ids: list[int], image_token_id: int, counts: list[int]
) -> tuple[tuple[int, int], ...]:
    """(start, length) of each image's run of image tokens: the image token's positions
    in order, cut by each image's token count (adjacent images share one run)."""
    positions = [i for i, t in enumerate(ids) if t == image_token_id]
    if len(positions) != sum(counts):
        raise ValueError(
            f"the prompt holds {len(positions)} image tokens where its images need "
            f"{sum(counts)}: the text must not contain the image token outside placeholders"
        )
    ranges, at = [], 0
    for n in counts:
        start = positions[at]
        if positions[at + n - 1] != start + n - 1:
            raise ValueError("an image's placeholder tokens are not contiguous in the prompt")
        ranges.append((start, n))
        at += n
    return tuple(ranges)
