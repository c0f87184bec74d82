"""The gateway's Dockerfile and .dockerignore, read statically (no Docker engine here)."""

from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.support import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
BUILD_TOOLS = ("build-essential", "gcc", "g++", "make ", "clang", "python3-dev", "libc6-dev")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(path: Path) -> list[Stage]:
    """Instructions per stage, with line continuations joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(
                r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE
            )
            assert match, f"unparsed FROM {args}"
            stages.append(Stage(base=match[1], name=match[2]))
        elif stages:
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE)


def dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def ignored(relative: str) -> bool:
    """Docker's rule: the last matching pattern wins, `!` re-includes; a pattern covers what lies below."""
    result = False
    for pattern in dockerignore_patterns():
        negate = pattern.startswith("!")
        body = pattern.removeprefix("!").rstrip("/")
        parts = relative.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(prefix, body) for prefix in prefixes):
            result = not negate
    return result


def test_multi_stage_on_slim_python(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    final = stages[-1]
    assert final.args("COPY"), "the final stage copies its files in"
    assert any(args.startswith(f"--from={stages[0].name}") for args in final.args("COPY"))
    base_arg = re.search(r"ARG PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text())
    base = base_arg[1] if base_arg and final.base == "${PYTHON_IMAGE}" else final.base
    assert base.startswith("python:3.11-slim")


def test_final_stage_has_no_build_tools(stages: list[Stage]) -> None:
    final = stages[-1]
    for run in final.args("RUN"):
        assert "apt-get install" not in run, run
        assert "pip install" not in run, run
        assert not any(tool in run for tool in BUILD_TOOLS), run
    assert "build-essential" in " ".join(stages[0].args("RUN")), "compilers belong to the builder"


def test_runtime_dependencies_only(stages: list[Stage]) -> None:
    installs = " ".join(run for stage in stages for run in stage.args("RUN") if "pip install" in run)
    assert not re.search(r"\.\[|\[(dev|train|triton)", installs), "no extras in the image"
    assert "-e " not in installs, "a real install, not an editable one"


def test_final_stage_runs_as_non_root(stages: list[Stage]) -> None:
    users = stages[-1].args("USER")
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit(), "a numeric uid lets Kubernetes verify runAsNonRoot"


def test_healthcheck_entrypoint_and_settings(stages: list[Stage]) -> None:
    final = stages[-1]
    (healthcheck,) = final.args("HEALTHCHECK")
    assert "/healthz" in healthcheck
    assert "python" in healthcheck
    assert "curl" not in healthcheck, "python:3.11-slim has no curl"
    assert final.args("EXPOSE") == ["8000"]
    env = " ".join(final.args("ENV"))
    assert "BIDGW_HOST=0.0.0.0" in env
    assert "BIDGW_SNAPSHOT_DIR=/app/data/snapshots" in env
    assert "BIDGW_CATALOG_PATH=/app/data/catalog/catalog.jsonl" in env  # the image's default catalog
    assert "BIDGW_NOTICE_ALLOW_DEV_KEY=false" in env  # an image never signs with the public dev key
    assert "BIDGW_WORKERS=" in env
    (cmd,) = final.args("CMD")
    assert cmd.startswith("["), "exec form: the server is PID 1 and gets SIGTERM"
    assert "--workers" not in cmd, "workers come from BIDGW_WORKERS"
    assert shlex.split(cmd.strip("[]").replace(",", " ")) == ["python", "-m", "gateway", "serve"]


def test_copied_sources_exist_and_are_not_ignored(stages: list[Stage]) -> None:
    sources: list[str] = []
    for stage in stages:
        for args in stage.args("COPY"):
            words = [word for word in args.split() if not word.startswith("--")]
            if any(word.startswith("--from") for word in args.split()):
                continue
            sources += words[:-1]
    assert {"pyproject.toml", "gateway/", "data/snapshots/", "data/catalog/"} <= set(sources)
    for source in sources:
        assert (REPO_ROOT / source).exists(), source
        assert not ignored(source.rstrip("/")), f"{source} is excluded by .dockerignore"
    assert any((REPO_ROOT / "data" / "snapshots").glob("*.jsonl.gz"))
    assert (REPO_ROOT / "data" / "catalog" / "catalog.jsonl").is_file()


@pytest.mark.parametrize(
    "path", [".venv", ".git", ".mypy_cache", ".pytest_cache", "tests", "training", "gateway/__pycache__"]
)
def test_dockerignore_excludes(path: str) -> None:
    assert ignored(path)


@pytest.mark.parametrize(
    "path",
    [
        "gateway/app.py",
        "pyproject.toml",
        "README.md",
        "data/snapshots/ads.jsonl.gz",
        "data/catalog/catalog.jsonl",
    ],
)
def test_dockerignore_keeps(path: str) -> None:
    assert not ignored(path)
