"""`pip install .` and `pip install -e .` put lockstep-probe.pth into site-packages: with LOCKSTEP_PROBE=1 an
unmodified training script — and the children torch.multiprocessing.spawn starts — run under the probe; with
the variable unset, Python does not even import the probe."""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from .jobs import DDP_JOB, REPO, ranks_by_number, start_collector, wait_for

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("editable", [False, True], ids=["wheel", "editable"])
def test_installed_package_switches_the_probe_on_by_environment_only(
    tmp_path: Path, subprocess_env: dict[str, str], editable: bool
) -> None:
    source = tmp_path / "src"
    for name in ("agent", "controller"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    env_dir = tmp_path / "venv"
    # the venv sees this machine's torch and setuptools; pip runs from there too, without network
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = str(env_dir / "bin" / "python")
    env = {k: v for k, v in subprocess_env.items() if k not in ("PYTHONPATH", "LOCKSTEP_PROBE")}
    target = ["-e", str(source)] if editable else [str(source)]
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", *target],
                   env=env, check=True, cwd=tmp_path, timeout=300)  # fmt: skip
    site_packages = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                                 env=env, text=True).strip())  # fmt: skip
    assert (site_packages / "lockstep-probe.pth").exists()

    quiet = subprocess.check_output([python, "-c", "import sys; print('agent.probe' in sys.modules)"], env=env, text=True)
    assert quiet.strip() == "False"

    socket_dir = tmp_path / "sock"
    collector = start_collector(socket_dir)
    try:
        job_env = {**env, "LOCKSTEP_PROBE": "1", "LOCKSTEP_SOCKET_DIR": str(socket_dir), "LOCKSTEP_JOB": "installed"}
        subprocess.run([python, str(DDP_JOB), "--nproc", "2", "--steps", "5"], env=job_env, cwd=tmp_path,
                       check=True, timeout=300, capture_output=True)  # fmt: skip
        wait_for(lambda: len(ranks_by_number(collector)) == 2, 30, "both spawned ranks")
        assert {r.job for r in collector.evidence().ranks} == {"installed"}
    finally:
        collector.close()
    loaded_from = subprocess.check_output(
        [python, "-c", "import sys, agent.probe; print(agent.probe.__file__)"], env=job_env, text=True, cwd=tmp_path
    )
    assert loaded_from.startswith(str(source if editable else site_packages))
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "lockstep"], env=env, check=True, timeout=120)
    assert not (site_packages / "lockstep-probe.pth").exists()
