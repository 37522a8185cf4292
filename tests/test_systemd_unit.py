"""The systemd unit: `systemd-analyze verify` when systemd is installed, plus static checks.

The static checks hold the unit to what the station needs (notify + watchdog, restart, hardening,
outputs under the StateDirectory) and keep it in step with `stream-run`'s real command line and
with the example environment file, which nothing else would notice drifting apart.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).parents[1] / "systemd"
UNIT = SYSTEMD_DIR / "swim-stream@.service"
ENV_EXAMPLE = SYSTEMD_DIR / "swim-stream.env.example"
TOML_EXAMPLE = SYSTEMD_DIR / "swim-stream.toml.example"
VERIFY_TIMEOUT_S = 60  # systemd-analyze loads the unit and its dependencies; seconds, not minutes
# systemd-analyze security rates 0 (locked down) .. 10 (no sandbox); below 3 is "OK" with margin.
MAX_EXPOSURE = 3.0


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections -> ordered (key, value) pairs; keys may repeat (Environment=, DeviceAllow=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path}: key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=VALUE: {line}"
        current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def one(section: list[tuple[str, str]], key: str) -> str:
    found = values(section, key)
    assert len(found) == 1, f"expected exactly one {key}=, found {found}"
    return found[0]


def parse_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"bad env line: {raw}"
        env[key] = value
    return env


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min)?", text)
    assert match, f"not a simple time span: {text}"
    factor = {"ms": 0.001, "s": 1.0, "min": 60.0, None: 1.0}[match.group(2)]
    return float(match.group(1)) * factor


@pytest.fixture(scope="module")
def unit() -> dict[str, list[tuple[str, str]]]:
    return parse_unit(UNIT)


def test_notify_watchdog_and_restart(unit: dict[str, list[tuple[str, str]]]) -> None:
    service = unit["Service"]
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert 5.0 <= seconds(one(service, "WatchdogSec")) <= 300.0
    assert one(service, "Restart") == "on-failure"
    assert seconds(one(service, "RestartSec")) >= 1.0
    # SIGTERM must leave time to flush the CSVs and write the summary before SIGKILL.
    assert seconds(one(service, "TimeoutStopSec")) >= 10.0


def test_ordering_and_install(unit: dict[str, list[tuple[str, str]]]) -> None:
    assert "network-online.target" in " ".join(values(unit["Unit"], "After"))
    assert "network-online.target" in " ".join(values(unit["Unit"], "Wants"))
    assert one(unit["Install"], "WantedBy") == "multi-user.target"


def test_hardening(unit: dict[str, list[tuple[str, str]]]) -> None:
    service = unit["Service"]
    assert one(service, "NoNewPrivileges") == "yes"
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "ProtectHome") in {"yes", "read-only", "tmpfs"}
    assert one(service, "PrivateTmp") == "yes"
    assert one(service, "StateDirectory") == "swim-stream/%i"
    dynamic = values(service, "DynamicUser") == ["yes"]
    assert dynamic or one(service, "User") == "swim-stream"
    assert "video" in one(service, "SupplementaryGroups").split()
    assert any("video4linux" in v or "/dev/video" in v for v in values(service, "DeviceAllow"))
    # PrivateDevices=yes would hide /dev/video* whatever DeviceAllow says.
    assert values(service, "PrivateDevices") in ([], ["no"])
    # PyTorch's oneDNN CPU kernels are JIT code in W+X pages; this would crash the first forward.
    assert values(service, "MemoryDenyWriteExecute") in ([], ["no"])


STREAM_RUN_INSTALLED = "/opt/swim-stream/venv/bin/stream-run"
FAKE_STATE_DIRECTORY = "/var/lib/swim-stream/cam0"


def systemd_expand(exec_start: str, env: dict[str, str], instance: str) -> list[str]:
    """What systemd hands to execve for this ExecStart (the subset of its rules the unit uses).

    Specifiers first (%i, %S, %C, %%), then $VAR / ${VAR} from the environment with $$ -> $,
    then systemd's quoting, which for our line is the shell's.
    """
    specifiers = {"%%": "%", "%i": instance, "%S": "/var/lib", "%C": "/var/cache"}
    text = re.sub(r"%[%iSC]", lambda m: specifiers[m.group(0)], exec_start)
    assert "%" not in text.replace("%Y", "").replace("%m", "").replace("%d", "").replace(
        "%H", "").replace("%M", "").replace("%S", ""), f"unknown specifier in {text}"

    def variable(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1) or match.group(2), "")

    # Approximation: systemd keeps a ${VAR} value with spaces as one word; shlex would split it.
    # Our ExecStart hands everything to the shell through $$, so the difference never arises.
    assert not re.search(r"\$\{\w+\}", text.replace("$$", "")), "add ${VAR} handling here"
    text = re.sub(r"\$\$|\$\{(\w+)\}|\$(\w+)", variable, text)
    return shlex.split(text)


def unit_environment(unit: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    """Environment= defaults overridden by the example file, as EnvironmentFile= would."""
    env = {}
    specifiers = {"%%": "%", "%i": "cam0", "%S": "/var/lib", "%C": "/var/cache"}  # systemd expands them here too
    for assignment in values(unit["Service"], "Environment"):
        key, _, value = assignment.partition("=")
        env[key] = re.sub(r"%[%iSC]", lambda m: specifiers[m.group(0)], value)
    env.update(parse_env_file(ENV_EXAMPLE))
    return env


def test_execstart_reads_the_settings_file_and_writes_to_state_dir(
    unit: dict[str, list[tuple[str, str]]]
) -> None:
    service = unit["Service"]
    assert one(service, "EnvironmentFile") == "-/etc/swim-stream/%i.env"  # optional: SWIM_RUN_NAME, SWIM_CONFIG
    assert "SWIM_CONFIG=/etc/swim-stream/%i.toml" in values(service, "Environment")
    exec_start = one(service, "ExecStart")
    argv = systemd_expand(exec_start, unit_environment(unit), "cam0")
    assert argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3, argv
    # `exec` so that stream-run replaces the shell: NotifyAccess=main accepts only the main PID.
    assert argv[2].lstrip().startswith(f"exec {STREAM_RUN_INSTALLED} "), argv[2]
    for variable in ("SWIM_CONFIG", "STATE_DIRECTORY", "SWIM_RUN_NAME"):
        assert f"${variable}" in argv[2] or f"${{{variable}" in argv[2], f"{variable} not passed to stream-run"


def _unit_argv(unit: dict[str, list[tuple[str, str]]], tmp_path: Path, env: dict[str, str]) -> list[str]:
    """The unit's command line run through /bin/sh with a stub in place of stream-run: its argv."""
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no /bin/sh")
    argv = systemd_expand(one(unit["Service"], "ExecStart"), env, "cam0")
    stub = tmp_path / "stream-run"
    stub.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    stub.chmod(0o755)
    script = argv[2].replace(STREAM_RUN_INSTALLED, str(stub))
    run_env = {**env, "STATE_DIRECTORY": str(tmp_path / "state"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    done = subprocess.run([sh, "-c", script], capture_output=True, text=True, env=run_env,
                          timeout=VERIFY_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_execstart_runs_stream_run_with_the_settings_file(
    unit: dict[str, list[tuple[str, str]]], tmp_path: Path
) -> None:
    args = _unit_argv(unit, tmp_path, unit_environment(unit))
    assert args[:2] == ["--config", "/etc/swim-stream/cam0.toml"], args
    out = Path(args[args.index("--out") + 1])
    assert out.parent == tmp_path / "state" and re.fullmatch(r"\d{8}T\d{6}Z", out.name), out
    assert len(args) == 4, args
    # the bug: a path with a space, handed over by the environment, stays one argument
    spaced = {**unit_environment(unit), "SWIM_CONFIG": "/etc/swim stream/cam 0.toml", "SWIM_RUN_NAME": "my trials"}
    args = _unit_argv(unit, tmp_path, spaced)
    assert args == ["--config", "/etc/swim stream/cam 0.toml", "--out", str(tmp_path / "state" / "my trials")], args


def test_execstart_with_empty_settings_passes_no_empty_argument(
    unit: dict[str, list[tuple[str, str]]], tmp_path: Path
) -> None:
    env = {**unit_environment(unit), "SWIM_RUN_NAME": ""}  # the unit's default
    argv = systemd_expand(one(unit["Service"], "ExecStart"), env, "cam0")
    done = subprocess.run(["sh", "-c", argv[2].replace(STREAM_RUN_INSTALLED, "printf '<%s>\\n'")],
                          capture_output=True, text=True, timeout=VERIFY_TIMEOUT_S,
                          env={**env, "STATE_DIRECTORY": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert "<>" not in done.stdout, done.stdout


def _stream_run_help() -> str:
    try:
        import stream.run  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"stream-run not available ({exc})")
    done = subprocess.run([sys.executable, "-m", "stream.run", "--help"], capture_output=True,
                          text=True, timeout=VERIFY_TIMEOUT_S)
    if done.returncode != 0 or "--model" not in done.stdout:
        # `python -m stream.run` needs an `if __name__ == "__main__"`; use the console script.
        exe = shutil.which("stream-run") or str(Path(sys.executable).with_name("stream-run"))
        done = subprocess.run([exe, "--help"], capture_output=True, text=True,
                              timeout=VERIFY_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_flags_in_unit_exist_in_stream_run_and_the_example_settings_load(
    unit: dict[str, list[tuple[str, str]]], tmp_path: Path
) -> None:
    help_text = _stream_run_help()
    argv = systemd_expand(one(unit["Service"], "ExecStart"), unit_environment(unit), "cam0")
    flags = {w for w in argv[2].split() if re.fullmatch(r"--[a-z][a-z0-9-]*", w)}
    assert flags == {"--config", "--out"}, flags
    unknown = sorted(f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", help_text))
    assert not unknown, f"stream-run --help does not know {unknown}"
    # the example settings are what stream-run reads: every table, key and value is accepted
    from stream.run import config_from_argv

    config = config_from_argv(["--config", str(TOML_EXAMPLE), "--out", str(tmp_path / "out")])
    assert config.source.camera == 0 and config.outputs.metrics_port == 9108
    assert config.model.dir == Path("/opt/swim-stream/trained_models/fst-side-64")
    assert len(config.arenas.rois) == 2 and config.outputs.out == tmp_path / "out"
    # and so is the commented-out alternative source
    alternative = TOML_EXAMPLE.read_text().replace("camera = 0", "#camera = 0").replace("#url =", "url =")
    (tmp_path / "url.toml").write_text(alternative)
    assert config_from_argv(["--config", str(tmp_path / "url.toml")]).source.url.startswith("rtsp://")


def test_every_variable_is_set_by_the_unit_the_example_or_systemd(
    unit: dict[str, list[tuple[str, str]]]
) -> None:
    argv = systemd_expand(one(unit["Service"], "ExecStart"), unit_environment(unit), "cam0")
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", argv[2]))
    set_by_systemd = {"STATE_DIRECTORY"}  # from StateDirectory=
    assert one(unit["Service"], "StateDirectory") == "swim-stream/%i"
    missing = used - set(unit_environment(unit)) - set_by_systemd
    assert not missing, f"ExecStart uses variables set nowhere: {sorted(missing)}"
    assert {"SWIM_CONFIG", "SWIM_RUN_NAME"} <= used


def _instance_copy(tmp_path: Path) -> Path:
    """An instantiated copy whose ExecStart points at an executable that exists here.

    verify rejects a missing ExecStart binary, and /opt/swim-stream is where a station installs
    it, not where the tests run; everything else is verified exactly as shipped.
    """
    exe = shutil.which("stream-run") or str(Path(sys.executable).with_name("stream-run"))
    if not Path(exe).exists():
        exe = sys.executable
    text = UNIT.read_text()
    assert "/opt/swim-stream/venv/bin/stream-run" in text
    copy = tmp_path / "swim-stream@cam0.service"
    copy.write_text(text.replace("/opt/swim-stream/venv/bin/stream-run", exe))
    return copy


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze not installed (Debian package 'systemd'; "
                    ".ci/install-system-deps.sh installs it)")
    return exe


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = _systemd_analyze()
    copy = _instance_copy(tmp_path)
    done = subprocess.run([exe, "verify", "--man=no", str(copy)], capture_output=True,
                          text=True, timeout=VERIFY_TIMEOUT_S)
    # Unknown keys and bad values are only warnings (exit 0): any line about our file fails.
    about_us = [line for line in done.stderr.splitlines() if copy.name in line]
    assert done.returncode == 0 and not about_us, done.stderr


def test_systemd_analyze_security_exposure(tmp_path: Path) -> None:
    exe = _systemd_analyze()
    copy = _instance_copy(tmp_path)
    done = subprocess.run([exe, "security", "--offline=yes", str(copy)], capture_output=True,
                          text=True, timeout=VERIFY_TIMEOUT_S)
    if "--offline" in done.stderr or "unrecognized option" in done.stderr:
        pytest.skip(f"systemd-analyze too old for security --offline: {done.stderr.strip()}")
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) < MAX_EXPOSURE, done.stdout
