"""A stand-in for a prepared smollm2-135m-instruct folder, for the tests of finding and
choosing it: the bundled pycoder's files (linked, not copied) plus the marker. Only the
folder's layout is real; loading it loads pycoder."""

from __future__ import annotations

import json
from pathlib import Path

from engine.assets import DEFAULT_MODEL_NAME, PREPARED_FORMAT, PREPARED_MARKER, default_model_path


def make_fake_prepared(models_dir: Path, marker: dict | None = None) -> Path:
    """models_dir/smollm2-135m-instruct with pycoder's files and a marker (default: the
    current format); returns the folder."""
    folder = models_dir / DEFAULT_MODEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    for source in default_model_path("pycoder").iterdir():
        (folder / source.name).symlink_to(source)
    content = {"format": PREPARED_FORMAT} if marker is None else marker
    (folder / PREPARED_MARKER).write_text(json.dumps(content))
    return folder
