"""The README's test command: `python3 -m luna.devsetup [pytest arguments]`.

Runs from a fresh checkout with nothing but Python >= 3.11 (standard library only, no virtualenv needed):

1. creates the virtualenv `.venv` (or `$LUNA_VENV`) unless it exists;
2. installs the project with its dev extras (`pip install -e '.[dev]'`) unless that virtualenv already holds
   this checkout's install of the current pyproject.toml;
3. installs what the tests run for real from Debian packages when it is missing and apt-get can be used
   (as root, or with sudo that needs no password): `dovecot-imapd` (the IMAP server of the e-mail tests),
   `postgresql-client` (psql, for `luna sql` and the documentation's examples);
4. runs pytest in that virtualenv (its bin/ first on PATH, so the tests' `luna` is this checkout's),
   passing any arguments on: `python3 -m luna.devsetup tests/test_cli.py -x`.

`--dry-run` (first argument) prints the steps and runs none. `.ci/run` calls exactly this command.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APT_PACKAGES = {"dovecot-imapd": ("dovecot", "/usr/sbin/dovecot"), "postgresql-client": ("psql", "/usr/bin/psql")}


def venv_dir() -> Path:
    return Path(os.environ.get("LUNA_VENV") or ROOT / ".venv")


def _python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _stamp_value() -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return f"{ROOT}\n{digest}\n"


def _installed(venv: Path) -> bool:
    """The virtualenv holds this checkout's editable install of the current pyproject.toml, and it imports."""
    stamp = venv / ".luna-dev-install"
    if not stamp.exists() or stamp.read_text() != _stamp_value():
        return False
    check = ("import importlib.metadata as m, pathlib, sys; m.version('luna'); import pytest, aiosmtpd, typer, luna; "
             f"sys.exit(pathlib.Path(luna.__file__).resolve().parent.parent != pathlib.Path({str(ROOT)!r}))")
    return subprocess.run([str(_python(venv)), "-c", check], cwd="/", capture_output=True).returncode == 0


def _missing_packages() -> list[str]:
    return [pkg for pkg, (cmd, path) in APT_PACKAGES.items() if not (shutil.which(cmd) or os.path.exists(path))]


def _apt_prefix() -> list[str] | None:
    """How to run apt-get here ([] as root, ['sudo', '-n'] with passwordless sudo), or None."""
    if not shutil.which("apt-get"):
        return None
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def plan(pytest_args: list[str]) -> list[tuple[str, list[str]]]:
    """The steps to take on this machine now: (what, command)."""
    venv = venv_dir()
    py = str(_python(venv))
    steps: list[tuple[str, list[str]]] = []
    fresh = not _python(venv).exists()
    if fresh:
        steps.append(("create the virtualenv", [sys.executable, "-m", "venv", str(venv)]))
        steps.append(("upgrade pip", [py, "-m", "pip", "install", "-q", "--upgrade", "pip"]))
    if fresh or not _installed(venv):
        steps.append(("install luna with its dev extras", [py, "-m", "pip", "install", "-e", f"{ROOT}[dev]"]))
    missing = _missing_packages()
    if missing:
        prefix = _apt_prefix()
        if prefix is None:
            steps.append((f"cannot install {', '.join(missing)} here (no apt-get, or not root and no sudo): "
                          "the tests that need them will say so", []))
        else:
            steps.append(("apt-get update", [*prefix, "apt-get", "update", "-qq"]))
            steps.append((f"install {', '.join(missing)}",
                          [*prefix, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]))
    steps.append(("run the tests", [py, "-m", "pytest", *pytest_args]))
    return steps


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    dry_run = bool(args) and args[0] == "--dry-run"
    if dry_run:
        args = args[1:]
    if sys.version_info < (3, 11):
        print(f"LUNA needs Python >= 3.11; this is {sys.version.split()[0]} ({sys.executable})", file=sys.stderr)
        return 2
    venv = venv_dir()
    env = dict(os.environ, VIRTUAL_ENV=str(venv), DEBIAN_FRONTEND="noninteractive",
               PATH=f"{_python(venv).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("PYTHONHOME", None)
    for what, command in plan(args):
        print(f"==> {what}" + (f": {' '.join(command)}" if command else ""), file=sys.stderr, flush=True)
        if dry_run or not command:
            continue
        if command[0] == str(_python(venv)) and command[1:3] == ["-m", "pytest"]:
            os.chdir(ROOT)
            os.execve(command[0], command, env)  # pytest's exit status is this command's
        rc = subprocess.run(command, cwd=ROOT, env=env).returncode
        if rc != 0:
            if "apt-get" in command:  # the tests that need the package say how to install it
                print(f"warning: `{' '.join(command)}` failed ({rc}); continuing", file=sys.stderr)
                continue
            print(f"`{' '.join(command)}` failed ({rc})", file=sys.stderr)
            return rc
        if "pip" in command and "-e" in command:
            (venv / ".luna-dev-install").write_text(_stamp_value())
    return 0


if __name__ == "__main__":
    sys.exit(main())
