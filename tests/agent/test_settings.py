"""Settings: command line over environment over YAML file over defaults; bad settings stop the agent with exit 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydantic import BaseModel

from agent.cli import SettingsError, build_parser, settings_from_args
from agent.settings import AgentSettings


def load(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *argv: str):  # type: ignore[no-untyped-def]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return settings_from_args(build_parser().parse_args(list(argv)))


def test_command_line_beats_environment_beats_file_beats_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "listen: 127.0.0.1:1000\n"
        "collector_timeout_seconds: 7\n"
        "network:\n  sysfs_root: /from-file\n  exclude_interfaces: '^veth'\n"
        "host:\n  procfs_root: /proc-from-file\n"
    )
    settings = load(
        monkeypatch,
        {"LOCKSTEP_LISTEN": "127.0.0.1:2000", "LOCKSTEP_NETWORK__SYSFS_ROOT": "/from-env"},
        "--config",
        str(config),
        "--listen",
        "127.0.0.1:3000",
    )
    assert settings.listen == "127.0.0.1:3000"  # CLI over env over file
    assert settings.network.sysfs_root == Path("/from-env")  # env over file, within a section
    assert settings.network.exclude_interfaces == "^veth"  # the file's other keys in that section stay
    assert settings.host.procfs_root == Path("/proc-from-file")
    assert settings.collector_timeout_seconds == 7
    assert settings.evidence_window_seconds == 10.0  # default


def test_environment_names_settings_in_any_case_lists_as_json_and_leaves_the_probes_variables_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load(
        monkeypatch,
        {
            "LOCKSTEP_PERIODICITY__INTERFACES": '["ens1f0np0", "ibp65s0"]',
            "lockstep_collector_timeout_seconds": "9",
            "LOCKSTEP_PROBE": "1",
            "LOCKSTEP_SOCKET_DIR": "/run/elsewhere",
            "LOCKSTEP_JOB": "a-job",
        },
    )
    assert settings.periodicity.interfaces == ["ens1f0np0", "ibp65s0"]
    assert settings.collector_timeout_seconds == 9
    assert settings.collective.socket_dir == "/run/lockstep"


def test_list_settings_take_comma_separated_items_or_json_on_the_command_line_and_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCKSTEP_PERIODICITY__EXCLUDE", "lo, docker*")
    parser = build_parser()
    settings = settings_from_args(parser.parse_args(["--periodicity.interfaces", "ens1f0np0,ens2f0np0"]))
    assert settings.periodicity.interfaces == ["ens1f0np0", "ens2f0np0"]
    assert settings.periodicity.exclude == ["lo", "docker*"]
    settings = settings_from_args(parser.parse_args(["--periodicity.interfaces", '["eth0"]']))
    assert settings.periodicity.interfaces == ["eth0"]
    assert "--periodicity.interfaces A,B,..." in parser.format_help()


def test_a_typo_in_an_environment_setting_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="network.sysfs_rot"):
        load(monkeypatch, {"LOCKSTEP_NETWORK__SYSFS_ROT": "/host/sys"})
    monkeypatch.delenv("LOCKSTEP_NETWORK__SYSFS_ROT")
    with pytest.raises(SettingsError, match="periodicity.interfaces"):
        load(monkeypatch, {"LOCKSTEP_PERIODICITY__INTERFACES": "[not json"})


def test_collector_switches_turn_collectors_off_and_on(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch, {"LOCKSTEP_HOST__ENABLED": "false"}, "--no-collector.nvml")
    assert not settings.nvml.enabled
    assert not settings.host.enabled
    assert settings.network.enabled
    assert load(monkeypatch, {}, "--collector.host").host.enabled


def test_node_name_comes_from_the_flag_then_node_name_env_then_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCKSTEP_NODE_NAME", raising=False)
    monkeypatch.setenv("NODE_NAME", "k8s-node-7")
    assert load(monkeypatch, {}).node_name == "k8s-node-7"
    assert load(monkeypatch, {}, "--node-name", "gpu-3").node_name == "gpu-3"
    monkeypatch.delenv("NODE_NAME")
    assert load(monkeypatch, {}).node_name != ""


def test_help_documents_every_setting_with_its_environment_variable() -> None:
    help_text = " ".join(build_parser().format_help().split())

    def leaves(model: type[BaseModel], path: tuple[str, ...]) -> list[tuple[str, ...]]:
        found = []
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                found += leaves(field.annotation, (*path, name))
            else:
                found.append((*path, name))
        return found

    every = leaves(AgentSettings, ())
    assert len(every) >= 12
    for path in every:
        env = "LOCKSTEP_" + "__".join(path).upper()
        assert f"[{env}]" in help_text, f"--help lacks {'.'.join(path)}"


@pytest.mark.parametrize(
    ("config", "args", "named"),
    [
        ("network:\n  evidence: 1\n", (), "network.evidence"),
        ("collector_timeout_seconds: -1\n", (), "collector_timeout_seconds"),
        ("network: [unclosed\n", (), "not valid YAML"),
        ("- just\n- a list\n", (), "mapping"),
        ("", ("--listen", "no-port-here"), "listen"),
        ("", ("--network.exclude-interfaces", "(veth"), "network.exclude_interfaces"),
        ("", ("--network.xmit-wait-bytes-per-tick", "many"), "network.xmit_wait_bytes_per_tick"),
    ],
)
def test_bad_settings_stop_the_agent_with_exit_2_and_a_message_naming_the_field(
    subprocess_env: dict[str, str], python: str, tmp_path: Path, config: str, args: tuple[str, ...], named: str
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(config)
    result = subprocess.run(
        [python, "-m", "agent", "--listen", "127.0.0.1:0", "--config", str(path), *args],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_config_file_is_a_clear_error(subprocess_env: dict[str, str], python: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [python, "-m", "agent", "--listen", "127.0.0.1:0", "--config", str(tmp_path / "absent.yaml")],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "absent.yaml" in result.stderr and "Traceback" not in result.stderr


def test_a_port_already_in_use_exits_1_with_a_message(subprocess_env: dict[str, str], python: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [python, "-m", "agent", "--listen", f"127.0.0.1:{port}", "--no-collector.nvml", "--no-collector.collective"],
            env=subprocess_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr and "Traceback" not in result.stderr
