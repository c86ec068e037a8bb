"""Packaging hook (everything else is in pyproject.toml): installs `lockstep-probe.pth` into site-packages and
builds the agent's NIC counter sampler (`agent._nicsample`, C) where a compiler is at hand.

The .pth switches the in-process probe on for any Python process when LOCKSTEP_PROBE=1 and costs one
environment lookup otherwise (agent/probe/lockstep-probe.pth). Setuptools has no option for a file at the
root of site-packages, so two commands place it: build_py for wheels (`pip install .`) and editable_wheel for
`pip install -e .`. tests/probe/test_probe_install.py installs both ways into a fresh venv to keep this honest.

The sampler is optional (a failed build is a warning): a training image that installs Lockstep for the probe needs
no compiler, and an agent without it samples from Python at a higher CPU cost (agent/backends/nic_sampler.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = Path(__file__).resolve().parent / "agent" / "probe" / "lockstep-probe.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file(str(PTH), str(Path(self.build_lib) / PTH.name))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH.name)]


class EditableWheelWithPth(editable_wheel):
    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):  # type: ignore[no-untyped-def]
        result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        shutil.copy(PTH, Path(unpacked_wheel) / PTH.name)
        return result


NIC_SAMPLE = Extension("agent._nicsample", ["agent/_nicsample.c"], extra_compile_args=["-O2"], optional=True)

setup(
    cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth},
    ext_modules=[NIC_SAMPLE],
)
