"""Every command shown in README.md and docs/*.md runs, as written (issue 10, item 17).

Each fenced `sh` / `bash` / `shell` block is one bash session (variables set by one line are used by the
next), with:
- a fresh copy of the demo database (DATABASE_URL) and edge served on a loopback port (`live_server`); the
  documented `localhost:8000` / `127.0.0.1:8000` are that server; `curl` fails on an HTTP error status
  (`--fail-with-body`), and a streaming `curl -N` is stopped after a few seconds;
- the working directory holding the repository's top level plus the example input files the docs name as
  "your file" (`leads.csv`, `musteriler.csv`);
- `luna up` started for real (on a free port), ended once /health answers; `luna bench NAME` run in its
  `--quick` size; `pytest ...` collected (`--collect-only`) rather than run inside this suite.
Only a line ending in `# not run: <reason>` is left out.

Fenced `sql` blocks run through `luna sql` (as the user named by a first line `-- as: EMAIL`, else as the
database owner).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = {"sh", "bash", "shell"}
NOT_RUN = re.compile(r"#\s*not run:\s*(?P<reason>\S.*)$")

EXAMPLE_FILES = {
    # docs/leads.md: `luna ingest csv leads.csv --tenant demo`
    "leads.csv": "firma_adi,yetkili,e_posta,telefon,sehir\n"
                 "Acar Mobilya,Mert Acar,mert@acarmobilya.com.tr,0532 100 20 30,İstanbul\n"
                 "Deniz Tekstil,Ayşe Deniz,ayse@deniztekstil.com.tr,0216 555 44 33,İzmir\n",
    # docs/crm.md: the customer import with mapping {"Ad Soyad": "full_name", "GSM": "phone"}
    "musteriler.csv": "Ad Soyad,GSM\nSelin Kaya,0532 987 65 43\nOrhan Demir,0533 123 45 67\n",
}


# ------------------------------------------------------------------------------------------ parsing
def blocks(path: Path) -> list[tuple[int, str, list[tuple[int, str]]]]:
    """(line of the opening fence, language, [(line number, text)]) of every fenced block."""
    found, current, lang, start = [], None, "", 0
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fence = re.match(r"^\s*```\s*([\w-]*)", line)
        if fence and current is None:
            current, lang, start = [], fence.group(1).lower(), n
        elif fence:
            found.append((start, lang, current))
            current = None
        elif current is not None:
            current.append((n, line))
    return found


def split_comment(text: str) -> tuple[str, str]:
    """Code and trailing comment of a shell line (a `#` after whitespace, outside quotes and $(...))."""
    quote, depth = None, 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and (quote == "'" or text[i - 1] != "\\"):
                quote = None
        elif ch in "'\"":
            quote = ch
        elif text.startswith("$(", i):
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif ch == "#" and not depth and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip(), text[i:]
    return text.rstrip(), ""


def commands(lines: list[tuple[int, str]]) -> list[dict]:
    """Logical commands of a shell block: continuation lines joined, heredoc bodies attached."""
    out, i = [], 0
    while i < len(lines):
        n, text = lines[i]
        i += 1
        if not text.strip() or text.strip().startswith("#"):
            continue
        parts = [text]
        while parts[-1].rstrip().endswith("\\") and i < len(lines):
            parts.append(lines[i][1])
            i += 1
        code, comment = split_comment(parts[-1])
        heredoc = re.search(r"<<-?\s*'?(\w+)'?", "\n".join(parts))
        body = []
        if heredoc:
            while i < len(lines):
                body.append(lines[i][1])
                i += 1
                if body[-1].strip() == heredoc.group(1):
                    break
        skip = NOT_RUN.search(comment)
        out.append({"line": n, "code": "\n".join(parts[:-1] + [code]), "body": body,
                    "skip": skip.group("reason") if skip else None})
    return out


def shown_blocks():
    for path in DOCS:
        for start, lang, lines in blocks(path):
            if lang in SHELLS or lang == "sql":
                yield pytest.param(path, start, lang, lines, id=f"{path.relative_to(ROOT)}:{start}")


# ------------------------------------------------------------------------------------------ running
PRELUDE = r'''
set -o pipefail
curl() {
  local a stream=0 rc
  for a in "$@"; do [ "$a" = "-N" ] && stream=1; done
  if [ $stream = 1 ]; then
    command curl -sS --fail-with-body --max-time "${STREAM_SECONDS:-3}" "$@"; rc=$?
    [ $rc = 28 ] && return 0; return $rc          # 28: the time limit ended the stream
  fi
  command curl -sS --fail-with-body --max-time 60 "$@"; rc=$?; echo; return $rc
}
__luna_up() {
  luna up "$@" > "$WORK/luna-up.log" 2>&1 &
  local pid=$! i
  for i in $(seq 1 240); do
    if command curl -sf "http://127.0.0.1:$LUNA_API_PORT/health" > /dev/null; then
      kill -TERM $pid; wait $pid; local rc=$?
      [ $rc = 0 ] || [ $rc = 143 ] || { cat "$WORK/luna-up.log" >&2; return $rc; }
      return 0
    fi
    kill -0 $pid 2> /dev/null || { cat "$WORK/luna-up.log" >&2; wait $pid; return 1; }
    sleep 0.5
  done
  kill -TERM $pid; wait $pid; cat "$WORK/luna-up.log" >&2; return 1
}
'''


def adapt(code: str, base: str) -> str:
    """The documented command as this test runs it (see the module docstring)."""
    netloc = base.split("://", 1)[1]
    code = code.replace("localhost:8000", netloc).replace("127.0.0.1:8000", netloc)
    words = code.split()
    if words[:2] == ["luna", "up"]:
        return "__luna_up" + code[len("luna up"):]
    if words[:2] == ["luna", "bench"] and "--quick" not in words:
        return code + " --quick"
    if words[:1] == ["pytest"] or words[1:3] == ["-m", "pytest"]:
        return code + " --collect-only -q"
    return code


def script_for(cmds: list[dict], base: str) -> str:
    out = [PRELUDE]
    for c in cmds:
        if c["skip"]:
            continue
        out.append(f"printf '%s\\n' {shlex.quote('@@ line ' + str(c['line']) + ': ' + c['code'])} >&2")
        out.append(adapt(c["code"], base))
        out.extend(c["body"])
        out.append(f"__rc=$?; if [ $__rc -ne 0 ]; then echo \"@@ FAILED: line {c['line']} (exit $__rc)\" >&2; "
                   "exit 1; fi")
    return "\n".join(out) + "\n"


@pytest.fixture
def workdir(tmp_path):
    """The repository's top level, plus the example files the docs call "your file"."""
    work = tmp_path / "work"
    work.mkdir()
    for entry in ROOT.iterdir():
        if not entry.name.startswith(".") or entry.name == ".ci":
            (work / entry.name).symlink_to(entry)
    for name, text in EXAMPLE_FILES.items():
        (work / name).write_text(text, encoding="utf-8")
    return work


def run_bash(script: str, work: Path, db_url: str, **env) -> subprocess.CompletedProcess:
    from .fakes import free_port

    path = work / "example.sh"
    path.write_text(script)
    full_env = dict(os.environ, DATABASE_URL=db_url, WORK=str(work), LUNA_API_PORT=str(free_port()),
                    LUNA_API_HOST="127.0.0.1", COLUMNS="160",
                    PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **env)
    return subprocess.run(["bash", str(path)], cwd=work, env=full_env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=600)


def _runnable_blocks():
    """Blocks with something to run (a block whose every line is marked `# not run:` is counted by
    test_skipped_lines_are_few_and_say_why instead)."""
    for param in shown_blocks():
        path, start, lang, lines = param.values
        if lang == "sql" or any(not c["skip"] for c in commands(lines)):
            yield param


@pytest.mark.parametrize("path, start, lang, lines", list(_runnable_blocks()))
def test_every_shown_command_runs(path, start, lang, lines, db_url, live_server, workdir):
    if lang == "sql":
        first = lines[0][1].strip() if lines else ""
        who = re.match(r"--\s*as:\s*(\S+)", first)
        cmds = [{"line": start, "code": f"luna sql {'--as ' + who.group(1) if who else ''} <<'SQL'".replace("  ", " "),
                 "body": [t for _, t in lines] + ["SQL"], "skip": None}]
    else:
        cmds = commands(lines)
    assert cmds and not all(c["skip"] for c in cmds)
    proc = run_bash(script_for(cmds, live_server), workdir, db_url)
    print(proc.stderr, proc.stdout, sep="\n--- stdout\n")  # shown with -s, or on failure
    assert proc.returncode == 0, f"{path.name}:{start}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def test_skipped_lines_are_few_and_say_why():
    skipped = [(p.name, c["line"], c["skip"]) for p in DOCS for _, lang, lines in blocks(p) if lang in SHELLS
               for c in commands(lines) if c["skip"]]
    assert all(len(reason) > 5 for _, _, reason in skipped), skipped
    assert len(skipped) <= 3, skipped  # long-running commands only (`luna up` with the install, the suite)


def readme_commands() -> list[dict]:
    return [c for _, lang, lines in blocks(ROOT / "README.md") if lang in SHELLS for c in commands(lines)]


def test_ci_runs_exactly_the_readme_test_command():
    shown = [c["code"] for c in readme_commands() if "luna.devsetup" in c["code"]]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert len(shown) == 1 and ci == shown, (shown, ci)


def test_test_command_plans_a_fresh_machine(tmp_path):
    """On a machine without the virtualenv, the README's test command creates it, installs '.[dev]', then
    runs pytest; with it installed it goes straight to pytest (--dry-run prints the steps only)."""
    fresh = subprocess.run([sys.executable, "-m", "luna.devsetup", "--dry-run", "-x"], cwd=ROOT,
                           env=dict(os.environ, LUNA_VENV=str(tmp_path / "venv")), capture_output=True, text=True)
    steps = [line for line in fresh.stderr.splitlines() if line.startswith("==> ")]
    assert fresh.returncode == 0 and not (tmp_path / "venv").exists(), fresh.stderr
    assert steps[0].startswith("==> create the virtualenv") and "install luna with its dev extras" in steps[2]
    assert steps[-1].endswith(f"{tmp_path / 'venv' / 'bin' / 'python'} -m pytest -x")
    # a virtualenv that already holds this checkout's install of this pyproject.toml: pytest only
    from luna import devsetup

    if sys.prefix == sys.base_prefix:
        pytest.skip("the suite runs outside a virtualenv")
    venv = tmp_path / "venv"  # an alias of the virtualenv this suite runs in, which holds the install
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(Path(sys.prefix) / "bin" / "python")
    (venv / "lib").symlink_to(Path(sys.prefix) / "lib")
    (venv / "pyvenv.cfg").write_text((Path(sys.prefix) / "pyvenv.cfg").read_text())
    (venv / ".luna-dev-install").write_text(devsetup._stamp_value())
    again = subprocess.run([sys.executable, "-m", "luna.devsetup", "--dry-run"], cwd=ROOT,
                           env=dict(os.environ, LUNA_VENV=str(venv)), capture_output=True, text=True)
    steps = [line for line in again.stderr.splitlines() if line.startswith("==> ")]
    assert [s.split(":")[0] for s in steps if "apt-get" not in s and "cannot install" not in s] == \
        ["==> run the tests"], again.stderr
    (venv / ".luna-dev-install").write_text("an older pyproject.toml\n")
    stale = subprocess.run([sys.executable, "-m", "luna.devsetup", "--dry-run"], cwd=ROOT,
                           env=dict(os.environ, LUNA_VENV=str(venv)), capture_output=True, text=True)
    assert "install luna with its dev extras" in stale.stderr


def test_readme_realtime_example_receives_the_board_event(db_url, live_server, workdir):
    """The README's stream subscribes to the topic move_card broadcasts on, so the move shows up in it."""
    cmds = readme_commands()
    stream = next(i for i, c in enumerate(cmds) if "/v1/realtime/stream" in c["code"])
    move = next(c for c in cmds if "move_card(" in c["code"] + "".join(c["body"]))
    setup = [c for c in cmds[:stream] if re.match(r"^[A-Z_]+=\$\(", c["code"])]
    assert {c["code"].split("=")[0] for c in setup} >= {"TOKEN", "BOARD"}
    script = script_for(setup, live_server) + f'''
{adapt(cmds[stream]["code"], live_server)} > "$WORK/stream.txt" &
STREAM=$!
for i in $(seq 1 100); do grep -q "event: joined" "$WORK/stream.txt" && break; sleep 0.1; done
''' + script_for([move], live_server).replace(PRELUDE, "") + '''
for i in $(seq 1 100); do grep -q "event: card_moved" "$WORK/stream.txt" && break; sleep 0.1; done
kill $STREAM 2> /dev/null
cat "$WORK/stream.txt"
'''
    proc = run_bash(script, workdir, db_url, STREAM_SECONDS="30")
    assert proc.returncode == 0, proc.stderr
    assert "event: joined" in proc.stdout and "event: card_moved" in proc.stdout, proc.stdout + proc.stderr
    assert "00000000-0000-4000-8005-000000000501" in proc.stdout.split("event: card_moved", 1)[1]
