"""The compiled dispatcher kernel for `c10d::allreduce_` (allreduce_kernel.cpp next to this file): built ahead, once
per torch, by `python -m agent.probe.compiled --build` (`make install` runs it), and loaded at probe activation only
if that build exists; a training process never compiles (that would stall the job at startup).

It does on the training thread, in C++ and without the GIL, what the Python kernel (agent/probe/dispatch.py) does,
and times every all-reduce's completion by a callback on its future (an atomic store on gloo's thread: no GIL). The
recorder takes its queue (`Recorder.compiled`): it numbers the queued all-reduces before it numbers any other
collective, and the sender's flush collects the running ones (pending: the hang signal) and the completed ones.
benchmarks/probe_cold_call.py (2-core VM, torch 2.13 CPU): cold added cost per all-reduce about -15 us (its unboxed
redispatch replaces torch's boxed autograd fallback, VariableFallbackKernel.cpp, which the op takes without a
kernel), the Python kernel's +190 us.

    python -m agent.probe.compiled --build [--dir DIR]    # build for the installed torch (~30 s)
    python -m agent.probe.compiled --where                # the build this torch would load, and whether it exists
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.probe.dispatch import EXPECTED_SCHEMA, KernelNotInstalled
from agent.probe.wire import Op

SOURCE = Path(__file__).with_name("allreduce_kernel.cpp")
MODULE_NAME = "lockstep_allreduce_kernel"
DIR_ENV = "LOCKSTEP_PROBE_KERNEL_DIR"  # where builds live; default: $XDG_CACHE_HOME (~/.cache)/lockstep/probe-kernel
CAPACITY = 8192  # all-reduces the kernel's queue holds between two takes (as Recorder's capacity)


def kernel_dir(environ: Mapping[str, str]) -> Path:
    """The directory holding the builds: $LOCKSTEP_PROBE_KERNEL_DIR, else the user's cache directory."""
    configured = environ.get(DIR_ENV, "").strip()
    if configured:
        return Path(configured)
    cache = environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "lockstep" / "probe-kernel"


def build_dir(root: Path) -> Path:
    """The build for the installed torch and Python and this source: another of either needs a build of its own."""
    import torch

    source_hash = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return root / f"torch-{torch.__version__}-{python}-{source_hash}"


def built_module(directory: Path) -> Path:
    return directory / f"{MODULE_NAME}.so"


def build(root: Path, verbose: bool = False) -> types.ModuleType:
    """Compile the kernel into `build_dir(root)` (torch.utils.cpp_extension, ninja) and load it."""
    from torch.utils.cpp_extension import load

    directory = build_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    module = load(MODULE_NAME, [str(SOURCE)], build_directory=str(directory), extra_cflags=["-O2"], verbose=verbose)
    sys.modules[MODULE_NAME] = module
    return module


def load_built(root: Path) -> types.ModuleType | None:
    """The built kernel module for this torch, or None if there is none (nothing is compiled here)."""
    path = built_module(build_dir(root))
    loaded = sys.modules.get(MODULE_NAME)
    if loaded is not None and Path(getattr(loaded, "__file__", "")) == path:
        return loaded  # an extension module initializes once per process
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[MODULE_NAME] = module
    return module


def install_compiled_kernel(root: Path, capacity: int = CAPACITY) -> Any:
    """Load the built kernel and register it for c10d::allreduce_ at AutogradCPU; returns the registered kernel
    (the allreduce_kernel.cpp `Kernel`: the registration lasts until its `unregister()` or its end). Raises
    KernelNotInstalled when no build for this torch exists, or what registering raises (another schema, another
    kernel there)."""
    module = load_built(root)
    if module is None:
        raise KernelNotInstalled(f"no compiled kernel built for this torch under {root}")
    kernel = module.Kernel(capacity, Op.all_reduce)
    kernel.register(EXPECTED_SCHEMA)
    return kernel


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m agent.probe.compiled",
        description="Build the probe's compiled all-reduce kernel for the installed torch (once per torch version; "
        "a probed training process loads it if present, else uses the Python kernel).",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--build", action="store_true", help="compile the kernel (g++, ninja; ~30 s)")
    action.add_argument("--where", action="store_true", help="print the build path and whether it exists")
    parser.add_argument("--dir", type=Path, help=f"builds directory (default: ${DIR_ENV}, else ~/.cache/lockstep/probe-kernel)")
    parser.add_argument("--verbose", action="store_true", help="show the compiler's commands")
    args = parser.parse_args(argv)
    root = args.dir or kernel_dir(os.environ)
    try:
        path = built_module(build_dir(root))
    except ImportError:
        print("error: torch is not installed; the kernel is built against the torch a job runs", file=sys.stderr)
        return 1
    if args.where:
        print(f"{path} ({'built' if path.is_file() else 'not built'})")
        return 0 if path.is_file() else 1
    print(f"building the probe's all-reduce kernel into {path.parent} ...", flush=True)
    try:
        build(root, verbose=args.verbose)
    except Exception as exc:  # compiler or headers missing, a compile error, a module that does not load: say what
        print(f"error: the build failed: {exc}", file=sys.stderr)
        return 1
    print(f"built {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
