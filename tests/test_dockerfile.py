"""The Dockerfile parses, and its install steps are the ones `make install` runs: the same
torch version, the same constraint mechanism, the same project install (without the test
tools), the same DeepSpeed prebuild. Both files are read here; nothing is copied."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text()
INSTRUCTIONS = {
    *("FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME"),
    *("USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"),
}
BASES = ("gaudi", "cuda", "cpu")
# Makefile install steps that do not belong in a serving image, and why.
TEST_ONLY = {"text-generation==": "the TGI client the tests and benchmarks use"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        start = start or number
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), " ".join(args.split()), start))
        pending, start = "", 0
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for instruction in instructions:
        if instruction.keyword == "ARG" and "=" in instruction.args:
            name, _, value = instruction.args.partition("=")
            defaults[name] = value
    return defaults


def makefile_install_steps(text: str) -> list[str]:
    """The install target's recipe lines, in shell with the Makefile's variables as
    ${NAME} and $(PY) as `python`."""
    recipe = text.split("\n$(STAMP):", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert recipe, "no recipe for $(STAMP) in the Makefile"
    steps = []
    for line in recipe:
        if not line.startswith("\t"):
            continue
        step = line.strip().replace("$(PY)", "python")
        steps.append(re.sub(r"\$\((\w+)\)", r"${\1}", step))
    return steps


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def run_text(dockerfile) -> str:
    """Every RUN command of the final stage, one string."""
    return " ; ".join(i.args for i in dockerfile if i.keyword == "RUN")


@pytest.fixture(scope="module")
def make_steps() -> list[str]:
    return makefile_install_steps((ROOT / "Makefile").read_text())


def test_the_dockerfile_parses_into_known_instructions(dockerfile):
    unknown = [(i.line, i.keyword) for i in dockerfile if i.keyword not in INSTRUCTIONS]
    assert not unknown
    stages = [i.args for i in dockerfile if i.keyword == "FROM"]
    assert stages[:-1] == [f"${{{b.upper()}_IMAGE}} AS base-{b}" for b in BASES]
    assert stages[-1] == "base-${BASE}"
    defaults = arg_defaults(dockerfile)
    assert defaults["BASE"] in BASES
    assert all(defaults[f"{b.upper()}_IMAGE"] for b in BASES)


def test_torch_version_is_the_makefiles(dockerfile):
    make_text = (ROOT / "Makefile").read_text()
    (make_version,) = re.findall(r"^TORCH_VERSION := (\S+)$", make_text, flags=re.MULTILINE)
    assert arg_defaults(dockerfile)["TORCH_VERSION"] == make_version


def test_every_install_step_of_the_makefile_is_in_the_dockerfile(make_steps, run_text):
    steps = [s for s in make_steps if "pip install" in s or "CONSTRAINT" in s or "python -c" in s]
    assert len(steps) >= 5  # pip upgrade, torch, the pin, the project, the prebuild, ...
    for step in steps:
        if any(marker in step for marker in TEST_ONLY):
            assert not any(marker in run_text for marker in TEST_ONLY)
        elif step.startswith("PIP_CONSTRAINT=") and " -e " in step:
            assert_same_project_install(step, run_text)
        else:
            # The torch step may add an index (PyPI's Linux torch is a CUDA build).
            assert step in run_text, f"Makefile step missing from the Dockerfile: {step}"


def assert_same_project_install(make_step: str, run_text: str) -> None:
    """Same command and constraint; extras: the Makefile's minus the test and benchmark
    tools (an image serves; it neither tests nor benchmarks)."""
    make_tokens = shlex.split(make_step)
    prefix = " ".join(make_step.split()[:-1])  # the command up to the install target
    assert prefix in run_text, f"no `{prefix} TARGET` in the Dockerfile"
    docker_target = run_text.split(prefix, 1)[1].split()[0]
    make_extras = extras_of(make_tokens[-1])
    docker_extras = extras_of(docker_target)
    assert make_extras >= {"test"} and pyproject_extras() >= make_extras
    assert docker_extras == make_extras - {"test", "bench"}
    assert docker_target.split("[")[0] == make_tokens[-1].split("[")[0] == "."


def pyproject_extras() -> set[str]:
    """The names under [project.optional-dependencies] (no TOML parser on Python 3.10)."""
    section = PYPROJECT.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+) = \[", section, flags=re.MULTILINE))


def extras_of(target: str) -> set[str]:
    """{'test'} of '.[test]'; empty without brackets."""
    match = re.search(r"\[(.*)\]", target)
    return {e for e in match.group(1).split(",") if e} if match else set()


def test_vendor_bases_pin_the_torch_they_ship(run_text):
    # Same mechanism as the Makefile: the installed torch goes into the constraint file.
    assert "pip list --format=freeze | grep -iE '^(torch|deepspeed|habana" in run_text
    assert "> ${CONSTRAINT}" in run_text


def test_ray_is_the_version_the_rendered_rayservice_names(dockerfile, run_text):
    from deployments.k8s.render import RAY_VERSION

    assert arg_defaults(dockerfile)["RAY_VERSION"] == RAY_VERSION
    assert 'echo "ray==${RAY_VERSION}" >> ${CONSTRAINT}' in run_text


def test_every_package_of_the_project_is_copied(dockerfile):
    (include,) = re.findall(r"^include = \[(.*)\]$", PYPROJECT, flags=re.MULTILINE)
    packages = {pattern.strip(' "*') for pattern in include.split(",")}
    sources = [i.args.split()[:-1] for i in dockerfile if i.keyword == "COPY"]
    copied = {source for group in sources for source in group}
    assert packages | {"pyproject.toml", "README.md"} <= copied


def test_parse_dockerfile_joins_continuations_and_skips_comments():
    text = '# c\nARG A=1\nRUN echo a \\\n    # inner comment\n    && echo b\n\nCMD ["x"]\n'
    assert parse_dockerfile(text) == [
        Instruction("ARG", "A=1", 2),
        Instruction("RUN", "echo a && echo b", 3),
        Instruction("CMD", '["x"]', 7),
    ]
