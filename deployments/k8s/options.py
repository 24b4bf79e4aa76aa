"""What a serving config does not say about the Kubernetes cluster it is rendered for."""

from __future__ import annotations

import re
from dataclasses import dataclass

from deployments.k8s.accelerators import ACCELERATORS, DEFAULT_ACCELERATOR, AcceleratorProfile
from deployments.k8s.volumes import ModelVolume

__all__ = ["DEFAULT_NAME", "MAX_NAME_LENGTH", "K8sOptions", "check_name"]

DEFAULT_NAME = "gaudi-serve"
_NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME_LENGTH = 40  # KubeRay appends suffixes to cluster, pod and service names


@dataclass(frozen=True)
class K8sOptions:
    """What the config does not say about the cluster.

    image: the container image of every pod (gaudi-serve installed over the accelerator's
        software stack; one image, so every Ray node runs the same Ray and Python); None
        means the placeholder `gaudi-serve:<accelerator>`, which you build and push.
    accelerator: what `device: auto` means here, and the worker group of those models.
    namespace: metadata.namespace of every object; None leaves it to kubectl.
    name: the RayService's name (the ConfigMap is `<name>-config-<hash>`).
    model_volume: a volume with the model weights, mounted read-only in every pod.
    cpus_per_card, memory_gib_per_card: what a worker pod asks for per card it holds
        (requests = limits); None means the accelerator's default (ACCELERATORS).
    """

    accelerator: str = DEFAULT_ACCELERATOR
    image: str | None = None
    namespace: str | None = None
    name: str = DEFAULT_NAME
    model_volume: ModelVolume | None = None
    cpus_per_card: int | None = None
    memory_gib_per_card: int | None = None

    def __post_init__(self) -> None:
        if self.accelerator not in ACCELERATORS:
            raise ValueError(
                f"accelerator must be one of {', '.join(ACCELERATORS)}, got {self.accelerator!r}"
            )
        check_name("name", self.name, MAX_NAME_LENGTH)
        if self.namespace is not None:
            check_name("namespace", self.namespace, 63)
        if self.image is not None and not self.image.strip():
            raise ValueError("image must be a non-empty image reference")
        for what, value in (
            ("cpus-per-card", self.cpus_per_card),
            ("memory-per-card", self.memory_gib_per_card),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{what} must be a whole number, got {value!r}")
            if value is not None and value < 1:
                raise ValueError(f"{what} must be at least 1, got {value}")

    def per_card(self, profile: AcceleratorProfile) -> tuple[int, int]:
        """(CPUs, memory in GiB) a worker pod of `profile` asks for per card."""
        num_cpus = self.cpus_per_card or profile.num_cpus_per_card
        return num_cpus, self.memory_gib_per_card or profile.memory_gib_per_card

    @property
    def resolved_image(self) -> str:
        return self.image or f"gaudi-serve:{self.accelerator}"


def check_name(what: str, value: str, max_length: int) -> str:
    """`value` if it is a DNS label of at most max_length characters, else ValueError."""
    if len(value) > max_length or not _NAME_PATTERN.match(value):
        raise ValueError(
            f"{what} must be lowercase letters, digits and '-', start with a letter, end "
            f"with a letter or digit, and have at most {max_length} characters; got {value!r}"
        )
    return value
