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
    for assignment in values(unit["Service"], "Environment"):
        key, _, value = assignment.partition("=")
        env[key] = value
    env.update(parse_env_file(ENV_EXAMPLE))
    return env


def test_execstart_reads_the_environment_file_and_writes_to_state_dir(
    unit: dict[str, list[tuple[str, str]]]
) -> None:
    service = unit["Service"]
    assert one(service, "EnvironmentFile") == "/etc/swim-stream/%i.env"
    exec_start = one(service, "ExecStart")
    argv = systemd_expand(exec_start, unit_environment(unit), "cam0")
    assert argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3, argv
    # `exec` so that stream-run replaces the shell: NotifyAccess=main accepts only the main PID.
    assert argv[2].lstrip().startswith(f"exec {STREAM_RUN_INSTALLED} "), argv[2]
    for variable in ("SWIM_SOURCE", "SWIM_MODEL", "STATE_DIRECTORY", "SWIM_METRICS_PORT",
                     "SWIM_ZMQ", "SWIM_EXTRA_ARGS"):
        assert f"${variable}" in argv[2], f"{variable} not passed to stream-run"


def test_execstart_runs_stream_run_with_the_settings_of_the_env_file(
    unit: dict[str, list[tuple[str, str]]], tmp_path: Path
) -> None:
    """Run the unit's command line through /bin/sh with a stub in place of stream-run."""
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no /bin/sh")
    env = unit_environment(unit)
    argv = systemd_expand(one(unit["Service"], "ExecStart"), env, "cam0")
    stub = tmp_path / "stream-run"
    stub.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    stub.chmod(0o755)
    script = argv[2].replace(STREAM_RUN_INSTALLED, str(stub))
    state = tmp_path / "state"
    run_env = {**env, "STATE_DIRECTORY": str(state), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    done = subprocess.run([sh, "-c", script], capture_output=True, text=True, env=run_env,
                          timeout=VERIFY_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    args = json.loads(done.stdout)
    example = parse_env_file(ENV_EXAMPLE)
    expected_head = [*example["SWIM_SOURCE"].split(), "--model", example["SWIM_MODEL"]]
    assert args[: len(expected_head)] == expected_head, args
    out = Path(args[args.index("--out") + 1])
    assert out.parent == state and re.fullmatch(r"\d{8}T\d{6}Z", out.name), out
    assert args[args.index("--metrics-port") + 1] == example["SWIM_METRICS_PORT"]
    assert args[args.index("--zmq") + 1] == example["SWIM_ZMQ"]
    assert args[-len(example["SWIM_EXTRA_ARGS"].split()):] == example["SWIM_EXTRA_ARGS"].split()


def test_execstart_without_extra_args_passes_no_empty_argument(
    unit: dict[str, list[tuple[str, str]]], tmp_path: Path
) -> None:
    env = {k: v for k, v in unit_environment(unit).items() if k != "SWIM_EXTRA_ARGS"}
    env["SWIM_EXTRA_ARGS"] = ""  # the unit's default
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


def test_flags_in_unit_and_example_exist_in_stream_run(
    unit: dict[str, list[tuple[str, str]]]
) -> None:
    help_text = _stream_run_help()
    argv = systemd_expand(one(unit["Service"], "ExecStart"), unit_environment(unit), "cam0")
    words = argv[2].split()
    for key in ("SWIM_SOURCE", "SWIM_EXTRA_ARGS"):
        words += parse_env_file(ENV_EXAMPLE).get(key, "").split()
    words += [line.split("=", 1)[1] for line in ENV_EXAMPLE.read_text().splitlines()
              if line.startswith("#SWIM_SOURCE=")]  # the commented-out alternative too
    flags = {w for w in " ".join(words).split() if re.fullmatch(r"--[a-z][a-z0-9-]*", w)}
    assert {"--model", "--out", "--metrics-port", "--zmq"} <= flags
    unknown = sorted(f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", help_text))
    assert not unknown, f"stream-run --help does not know {unknown}"


def test_every_variable_is_set_by_the_unit_the_example_or_systemd(
    unit: dict[str, list[tuple[str, str]]]
) -> None:
    argv = systemd_expand(one(unit["Service"], "ExecStart"), unit_environment(unit), "cam0")
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", argv[2]))
    set_by_systemd = {"STATE_DIRECTORY"}  # from StateDirectory=
    assert one(unit["Service"], "StateDirectory") == "swim-stream/%i"
    missing = used - set(unit_environment(unit)) - set_by_systemd
    assert not missing, f"ExecStart uses variables set nowhere: {sorted(missing)}"
    assert {"SWIM_MODEL", "SWIM_SOURCE"} <= set(parse_env_file(ENV_EXAMPLE))


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
