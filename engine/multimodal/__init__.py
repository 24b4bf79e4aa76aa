"""Images in prompts: the processed images of a request and the processor that makes them.

`MultiModalProcessor.load(model_dir)` gives the model's processor (None for a text-only
model); `process(text, images)` gives the prompt ids and a `MultiModalInput`, which
`Engine.add_request(..., multi_modal=...)`, `AsyncEngine.generate(..., multi_modal=...)` and
the prefix-cache hashes (`engine.prefix_block_hashes(..., extra_keys=...)`) take.
Importing this package loads neither torch nor transformers.
"""

from engine.multimodal.inputs import MultiModalInput
from engine.multimodal.processor import MultiModalProcessor, check_images

__all__ = ["MultiModalInput", "MultiModalProcessor", "check_images"]
