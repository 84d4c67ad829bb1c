"""scripts/system-deps.sh: what `make setup`/`make test` do about missing Debian packages.

Each test runs the script with a PATH of fake programs (id, apt-get, sudo, the tools), so the real
machine's packages and privileges play no part."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "system-deps.sh"
BASH = shutil.which("bash")


def _program(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!{BASH}\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def machine(tmp_path):
    """A fake machine: `uid`, `has_sudo`, `has_apt`, `installed` set before `run(...)`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for tool in ("env", "chmod"):
        os.symlink(shutil.which(tool), bin_dir / tool)

    class Machine:
        uid = 1000
        has_sudo = True
        has_apt = True
        installed: tuple[str, ...] = ()

        def run(self, *packages: str, python: str = "python3"):
            _program(bin_dir, "id", f'[ "$1" = -u ] && echo {self.uid}')
            if self.has_sudo:
                _program(bin_dir, "sudo", f'echo "sudo $*" >> {log}; exec "$@"')
            if self.has_apt:
                # "Installs" a package by putting a program of its name on PATH.
                _program(bin_dir, "apt-get", f'echo "apt-get $*" >> {log}\n'
                         f'[ "$1" = install ] && for p in "$@"; do case "$p" in -*|install) ;; '
                         f'*) printf "#!{BASH}\\n" > {bin_dir}/$p; chmod +x {bin_dir}/$p;; esac; done; true')
            for name in self.installed:
                _program(bin_dir, name, "true")
            done = subprocess.run([BASH, str(SCRIPT), *packages], capture_output=True, text=True,
                                  env={"PATH": str(bin_dir), "PYTHON": python}, timeout=30)
            calls = log.read_text().splitlines() if log.exists() else []
            return done, calls

    return Machine()


def test_nothing_happens_when_every_package_is_present(machine):
    machine.installed = ("espeak-ng", "flite")
    done, calls = machine.run("espeak-ng", "flite")
    assert done.returncode == 0 and calls == [] and done.stderr == ""


def test_root_installs_only_the_missing_packages_with_apt_get(machine):
    machine.uid, machine.installed = 0, ("espeak-ng",)
    done, calls = machine.run("espeak-ng", "flite", "chromium")
    assert done.returncode == 0, done.stderr
    assert calls == ["apt-get update -q", "apt-get install -y -q --no-install-recommends flite chromium"]
    assert "installing Debian packages flite chromium" in done.stderr


def test_a_user_installs_through_sudo(machine):
    done, calls = machine.run("flite")
    assert done.returncode == 0, done.stderr
    assert calls[0] == "sudo apt-get update -q" and calls[-1].endswith("install -y -q --no-install-recommends flite")
    assert any(c.startswith("sudo env DEBIAN_FRONTEND=noninteractive apt-get install") for c in calls)


def test_a_user_without_sudo_gets_one_line_naming_the_command_and_a_failure(machine):
    machine.has_sudo = False
    done, calls = machine.run("espeak-ng", "flite")
    assert done.returncode == 1 and calls == []
    assert done.stderr.count("\n") == 1
    assert "`apt-get update && apt-get install -y -q --no-install-recommends espeak-ng flite` as root" in done.stderr


def test_a_machine_without_apt_get_is_told_which_packages_are_missing(machine):
    machine.uid, machine.has_apt = 0, False
    done, calls = machine.run("chromium")
    assert done.returncode == 1 and calls == []
    assert done.stderr.count("\n") == 1 and "chromium" in done.stderr and "no apt-get" in done.stderr


def test_python3_venv_counts_as_present_when_ensurepip_imports(machine, tmp_path):
    machine.uid = 0
    done, calls = machine.run("python3-venv", python=sys.executable)
    assert done.returncode == 0 and calls == []
    broken = tmp_path / "python-without-ensurepip"
    _program(tmp_path, broken.name, "exit 1")
    done, calls = machine.run("python3-venv", python=str(broken))
    # The fake apt-get "installs" a program, not ensurepip: the script checks again and says so.
    assert calls[-1].endswith("--no-install-recommends python3-venv")
    assert done.returncode == 1 and "did not provide it" in done.stderr


def test_makefile_installs_the_test_packages_before_the_tests():
    makefile = (ROOT / "Makefile").read_text()
    test_rule = next(line for line in makefile.splitlines() if line.startswith("test:"))
    prerequisites = test_rule.removeprefix("test:").split()
    assert prerequisites[:2] == ["setup", "system-deps"], test_rule
    assert "scripts/system-deps.sh $(TEST_PACKAGES)" in makefile
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("\nmake test")
