"""The dispatcher kernel is installed only on the torch it was written for; elsewhere the probe keeps its hook."""

from __future__ import annotations

import pytest

from agent.probe import dispatch
from agent.probe.recorder import Recorder


def test_kernel_is_not_installed_for_an_allreduce_schema_it_was_not_written_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch
    import torch.distributed  # noqa: F401  (registers the c10d ops)

    assert str(torch.ops.c10d.allreduce_.default._schema) == dispatch.EXPECTED_SCHEMA  # the torch CI installs
    monkeypatch.setattr(dispatch, "EXPECTED_SCHEMA", dispatch.EXPECTED_SCHEMA.replace("int timeout", "int ttl"))
    with pytest.raises(dispatch.KernelNotInstalled, match="another schema"):
        dispatch.install_allreduce_kernel(Recorder(), lambda group: "default")
    assert not torch._C._dispatch_has_kernel_for_dispatch_key("c10d::allreduce_", dispatch.DISPATCH_KEY)
