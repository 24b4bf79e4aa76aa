"""Model weights on a Kubernetes volume: a PersistentVolumeClaim or a node's folder
(hostPath), mounted read-only at the same path in every pod.

    ModelVolume.parse("pvc:llama-weights")               # the claim, at /models
    ModelVolume.parse("hostPath:/data/models:/weights")  # a node folder, at /weights

Model `path`s in the config are then absolute paths under the mount, e.g. /models/llama.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

__all__ = ["DEFAULT_MODEL_MOUNT", "VOLUME_KINDS", "ModelVolume"]

DEFAULT_MODEL_MOUNT = "/models"
VOLUME_KINDS = ("pvc", "hostPath")
VOLUME_NAME = "models"
SYNTAX = "pvc:CLAIM[:MOUNT] or hostPath:/NODE/PATH[:MOUNT]"
_CLAIM_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_TAKEN_MOUNTS = ("/etc/gaudi-serve", "/dev/shm")  # the config and shared memory


@dataclass(frozen=True)
class ModelVolume:
    """kind: "pvc" (source: the claim's name; it must allow ReadOnlyMany or ReadWriteMany
    access when pods run on several nodes) or "hostPath" (source: an existing folder on
    every node that may run a pod). mount_path: where every pod sees it."""

    kind: str
    source: str
    mount_path: str = DEFAULT_MODEL_MOUNT

    def __post_init__(self) -> None:
        if self.kind not in VOLUME_KINDS:
            raise ValueError(
                f"model-volume kind must be one of {', '.join(VOLUME_KINDS)}, got {self.kind!r}"
            )
        if self.kind == "pvc" and (len(self.source) > 253 or not _CLAIM_PATTERN.match(self.source)):
            raise ValueError(
                "model-volume claim must be lowercase letters, digits, '-' and '.', start and "
                f"end with a letter or digit, at most 253 characters; got {self.source!r}"
            )
        if self.kind == "hostPath":
            _check_absolute("model-volume hostPath", self.source)
        mount = _check_absolute("model-volume mount path", self.mount_path)
        taken = [path for path in _TAKEN_MOUNTS if _overlaps(mount, PurePosixPath(path))]
        if mount == PurePosixPath("/") or taken:
            raise ValueError(
                f"model-volume mount path {self.mount_path!r} overlaps {taken or ['/']}; "
                f"pick another folder, e.g. {DEFAULT_MODEL_MOUNT}"
            )

    @classmethod
    def parse(cls, text: str) -> ModelVolume:
        """`pvc:CLAIM[:MOUNT]` or `hostPath:/PATH[:MOUNT]` (ValueError naming the syntax)."""
        kind, _, rest = text.partition(":")
        source, _, mount = rest.partition(":")
        if not source:
            raise ValueError(f"model-volume must be {SYNTAX}, got {text!r}")
        return cls(kind, source, mount or DEFAULT_MODEL_MOUNT)

    def volume(self) -> dict[str, Any]:
        """The pod's `volumes` entry."""
        if self.kind == "pvc":
            return {
                "name": VOLUME_NAME,
                "persistentVolumeClaim": {"claimName": self.source, "readOnly": True},
            }
        return {"name": VOLUME_NAME, "hostPath": {"path": self.source, "type": "Directory"}}

    def volume_mount(self) -> dict[str, Any]:
        """The container's `volumeMounts` entry."""
        return {"name": VOLUME_NAME, "mountPath": self.mount_path, "readOnly": True}


def _check_absolute(what: str, value: str) -> PurePosixPath:
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{what} must be an absolute path without '..', got {value!r}")
    return path


def _overlaps(a: PurePosixPath, b: PurePosixPath) -> bool:
    return a == b or a in b.parents or b in a.parents
