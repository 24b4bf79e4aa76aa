"""The shared byte-level BPE tokenizer of the bundled models.

One ``<|endoftext|>`` token is BOS, EOS and the document separator (GPT-2 style); the
post-processor prepends it to every encoded text, as training saw each file right after one.
``<|pad|>`` pads batches and never appears in training data. The chat template uses plain-text
role markers (``<|user|>`` and so on are ordinary BPE pieces, not special tokens), so the
model has seen every piece of a rendered chat prompt.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

VOCAB_SIZE = 4096
ENDOFTEXT = "<|endoftext|>"
PAD = "<|pad|>"
MAX_MODEL_LENGTH_TOKENS = 2048

# Renders e.g. "<|endoftext|><|user|>\nHi\n<|assistant|>\n"; an assistant turn ends with EOS.
# NOTE: newlines are Jinja string literals because transformers renders with trim_blocks=True,
# which would eat a literal newline that follows a block tag.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# Saved instead of transformers 5's own "TokenizersBackend", which transformers 4.x (still
# common in vendor images) does not know; both versions load tokenizer.json through this name.
SAVED_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def train_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Train the BPE on ``texts`` and wrap it as a transformers tokenizer."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[ENDOFTEXT, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    endoftext_id = backend.token_to_id(ENDOFTEXT)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{ENDOFTEXT} $A",
        pair=f"{ENDOFTEXT} $A {ENDOFTEXT} $B",
        special_tokens=[(ENDOFTEXT, endoftext_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=ENDOFTEXT,
        eos_token=ENDOFTEXT,
        pad_token=PAD,
        model_max_length=MAX_MODEL_LENGTH_TOKENS,
        chat_template=CHAT_TEMPLATE,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: pathlib.Path) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (chat template inline)."""
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = SAVED_TOKENIZER_CLASS
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
