"""The documentation runs: every shell and Python code block of README.md, docs/*.md and docs/bench/*.md.

One test per block, with ids such as ``docs/flux.md:3`` (the third runnable block of that file).

- ``bash`` / ``sh`` / ``shell`` blocks run under ``bash -e -o pipefail`` and ``console`` blocks
  run their ``$ `` lines; ``python`` blocks run in one namespace per doc file, in order, so a
  file's blocks may build on each other. All blocks of a file share one fresh working directory.
- The console scripts (``sae-flux``, ``itda``, ``cae``) and ``python`` are shims on ``PATH`` that
  run in a warm, forked copy of a process that imported torch/diffusers/nnsight once
  (``tests/doc_runner.py``); the code they run is the installed entry point, unchanged.
- ``SAE_FLUX_VLM_BASE_URL`` / ``SAE_FLUX_VLM_MODEL`` point at a loopback stand-in VLM
  (``tests/vlm_server.py``); the Hub is offline (``HF_HUB_OFFLINE=1``).
- **Marker**: a block that cannot run here says why in its first line, visibly, as a comment:
  ``# not run in tests: needs a GPU and the FLUX.1-schnell weights``. It is reported as skipped
  with that reason. Output, JSON samples and directory trees are not code: they use a
  non-runnable fence language (``text``, ``json``); every fence must name its language, and a
  ``text`` block may not hide a command of this project.

The terminal summary (``tests/conftest.py``) prints how many blocks ran and how many are marked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from doc_runner import Session, entry_points
from vlm_server import VLMServer

REPO = Path(__file__).resolve().parent.parent
DOCS = ["README.md", *(str(p.relative_to(REPO)) for p in sorted((REPO / "docs").glob("*.md"))),
        *(str(p.relative_to(REPO)) for p in sorted((REPO / "docs" / "bench").glob("*.md")))]
LANGUAGES = {"bash": "shell", "sh": "shell", "shell": "shell", "console": "console", "python": "python",
             "py": "python"}
MARKER = re.compile(r"^#\s*not run in tests:\s*(?P<reason>\S.*)$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>[^`]*)$")
#: Commands of this project that a ``text`` block must not hide.
COMMAND = re.compile(r"^\s*(\$\s+)?(\S+=\S+\s+)*(sae-flux|itda|cae|make|python3?|\S*/bin/python|pip)(\s|$)")
BLOCK_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Fence:
    """One fenced block of a markdown file."""

    doc: str
    line: int
    info: str
    code: str


@dataclass(frozen=True)
class Block:
    """One runnable block: ``kind`` is shell, console or python; ``marked`` the reason it is not run."""

    doc: str
    number: int
    line: int
    kind: str
    code: str
    marked: str | None

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.number}"


def fences(doc: str, text: str) -> list[Fence]:
    """Every fenced block of ``text``, with its info string and its 1-based opening line."""
    found: list[Fence] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, start, body = len(match["indent"]), i, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            line = lines[i]
            body.append(line[indent:] if line[:indent].strip() == "" else line.lstrip())
            i += 1
        found.append(Fence(doc, start + 1, match["info"].strip(), "\n".join(body) + "\n"))
        i += 1
    return found


def blocks(doc: str, text: str) -> list[Block]:
    """The runnable blocks of ``text``, numbered from 1 in the order they appear."""
    runnable = [f for f in fences(doc, text) if f.info.split(" ")[0] in LANGUAGES]
    out = []
    for number, fence in enumerate(runnable, start=1):
        first = fence.code.splitlines()[0] if fence.code.strip() else ""
        marker = MARKER.match(first.strip())
        out.append(Block(doc, number, fence.line, LANGUAGES[fence.info.split(" ")[0]], fence.code,
                         marker["reason"] if marker else None))
    return out


def console_commands(code: str) -> str:
    """The commands of a console transcript: ``$ `` lines and their backslash continuations."""
    commands, continued = [], False
    for line in code.splitlines():
        if continued or line.startswith("$ "):
            commands.append(line if continued else line[2:])
            continued = line.rstrip().endswith("\\")
    return "\n".join(commands) + "\n"


def _all_blocks() -> list[Block]:
    return [b for doc in DOCS for b in blocks(doc, (REPO / doc).read_text(encoding="utf-8"))]


ALL_BLOCKS = _all_blocks()


# -- the environment the blocks run in --


@dataclass
class Runner:
    """The warm doc runner, the shims on PATH and the environment every block gets."""

    socket: str
    env: dict[str, str]
    root: Path
    docs: dict[str, DocRun] = field(default_factory=dict)

    def doc(self, name: str) -> DocRun:
        if name not in self.docs:
            workdir = self.root / re.sub(r"[^\w.-]", "_", name)
            workdir.mkdir()
            self.docs[name] = DocRun(self, name, workdir)
        return self.docs[name]


@dataclass
class DocRun:
    """The blocks of one doc file run in order in one working directory (and one namespace)."""

    runner: Runner
    doc: str
    workdir: Path
    results: dict[int, str | None] = field(default_factory=dict)
    session: Session | None = None
    log: Path | None = None

    def run_until(self, block: Block) -> None:
        """Run the file's blocks up to ``block``; fail on the first one that breaks."""
        for earlier in [b for b in ALL_BLOCKS if b.doc == self.doc and b.number < block.number]:
            if earlier.marked is None and earlier.number not in self.results:
                self.results[earlier.number] = self.run(earlier)
            if self.results.get(earlier.number):
                pytest.fail(f"not run: the earlier block {earlier.id} (line {earlier.line}) failed", pytrace=False)
        if block.number not in self.results:
            self.results[block.number] = self.run(block)
        if self.results[block.number]:
            pytest.fail(f"{block.id} (line {block.line}) failed:\n{self.results[block.number]}", pytrace=False)

    def run(self, block: Block) -> str | None:
        """The failure text of ``block``, or None when it ran cleanly."""
        started = time.perf_counter()
        error = self._python(block) if block.kind == "python" else self._shell(block)
        print(f"{block.id}: {'failed' if error else 'ok'} in {time.perf_counter() - started:.1f} s")
        return error

    def _shell(self, block: Block) -> str | None:
        script = block.code if block.kind == "shell" else console_commands(block.code)
        try:
            done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", "PS4='+ [${SECONDS} s] '; set -x\n" + script],
                                  cwd=self.workdir, env=self.runner.env, capture_output=True, text=True,
                                  timeout=BLOCK_TIMEOUT_S, start_new_session=True)
        except subprocess.TimeoutExpired as err:
            return f"timed out after {BLOCK_TIMEOUT_S:.0f} s\n{_tail(err.stdout)}{_tail(err.stderr)}"
        print("".join(line for line in done.stderr.splitlines(keepends=True) if line.startswith("+ [")))
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
        if done.returncode:
            return f"exit status {done.returncode}\n--- stdout\n{_tail(done.stdout)}\n--- stderr\n{_tail(done.stderr)}"
        return None

    def _python(self, block: Block) -> str | None:
        if self.session is None:
            self.log = self.workdir.parent / f"{self.workdir.name}.python.log"
            with open(self.log, "wb") as output:
                self.session = Session(self.runner.socket, str(self.workdir), self.runner.env, output.fileno())
        assert self.log is not None
        before = self.log.stat().st_size
        # padded so that a traceback names the doc file and the line in it
        error = self.session.run("\n" * block.line + block.code, block.doc, BLOCK_TIMEOUT_S)
        output = self.log.read_bytes()[before:].decode("utf-8", "replace")
        print(output[-4000:])
        return f"{error}\n--- output\n{_tail(output)}" if error else None

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


def _tail(text: str | bytes | None, limit: int = 6000) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return (text or "")[-limit:]


def _shims(bin_dir: Path) -> None:
    """Executables on PATH that hand their command line to the warm runner."""
    bin_dir.mkdir()
    for name in [*entry_points(), "python", "python3"]:
        shim = bin_dir / name
        target = "python" if name.startswith("python") else name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "{REPO / "tests" / "doc_runner.py"}" shim {target} "$@"\n')
        shim.chmod(0o755)


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    root = tmp_path_factory.mktemp("docs")
    _shims(root / "bin")
    with VLMServer() as vlm:
        env = {**os.environ, "PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               "MPLBACKEND": "Agg", "TOKENIZERS_PARALLELISM": "false", "DOC_RUNNER_SOCKET": str(root / "runner.sock"),
               # one thread per process: the suite shares the cores, and OpenMP threads that spin on an
               # oversubscribed machine made the doc commands 3x slower
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "SAE_FLUX_VLM_BASE_URL": vlm.url, "SAE_FLUX_VLM_MODEL": "stand-in-vlm"}
        with open(root / "runner.log", "wb") as log:
            server = subprocess.Popen([sys.executable, str(REPO / "tests" / "doc_runner.py"), "serve",
                                       env["DOC_RUNNER_SOCKET"]], env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            assert server.stdout is not None
            assert server.stdout.readline().strip() == "ready", f"doc runner did not start:\n{_tail((root / 'runner.log').read_text())}"
            run = Runner(env["DOC_RUNNER_SOCKET"], env, root)
            yield run
            for doc in run.docs.values():
                doc.close()
        finally:
            server.kill()
            server.wait()
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.id for b in ALL_BLOCKS])
def test_doc_block(block: Block, runner: Runner) -> None:
    if block.marked:
        pytest.skip(f"marked: not run in tests: {block.marked}")
    runner.doc(block.doc).run_until(block)


# -- the conventions themselves --


def test_every_fence_names_its_language():
    bare = [f"{f.doc}:{f.line}" for doc in DOCS for f in fences(doc, (REPO / doc).read_text(encoding="utf-8"))
            if not f.info]
    assert bare == [], f"fences without a language (bash/python for code, text for output): {bare}"


def _indented_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines indented by 4+ spaces outside fences (markdown's indented code blocks), numbered from 1."""
    inside = False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            inside = not inside
        elif not inside and line.startswith("    "):
            yield number, line


def test_text_blocks_hide_no_commands():
    hidden = [f"{f.doc}:{f.line}: {line.strip()}" for doc in DOCS
              for f in fences(doc, (REPO / doc).read_text(encoding="utf-8"))
              if f.info.split(" ")[0] not in LANGUAGES for line in f.code.splitlines() if COMMAND.match(line)]
    hidden += [f"{doc}:{number}: {line.strip()}" for doc in DOCS
               for number, line in _indented_lines((REPO / doc).read_text(encoding="utf-8")) if COMMAND.match(line)]
    assert hidden == [], "commands outside runnable blocks (fence them as bash and run or mark them):\n" + "\n".join(hidden)


def test_markers_stand_on_the_first_line_and_say_why():
    misplaced = [b.id for b in ALL_BLOCKS if "not run in tests" in b.code and b.marked is None]
    assert misplaced == [], f"'not run in tests' must be the block's first line, with a reason: {misplaced}"


SAMPLE = """# T

```bash
echo one
```

```python
# not run in tests: needs a GPU
x = 1
```

```text
sae-flux hooks
```

  ```py
  y = 2
  ```

```console
$ cae train \\
    --out v
{"out": "v"}
```
"""


def test_blocks_are_numbered_per_file_with_their_kind_line_and_marker():
    found = blocks("t.md", SAMPLE)
    assert [(b.id, b.kind, b.line, b.marked) for b in found] == [
        ("t.md:1", "shell", 3, None), ("t.md:2", "python", 7, "needs a GPU"), ("t.md:3", "python", 16, None),
        ("t.md:4", "console", 20, None)]
    assert found[2].code == "y = 2\n"
    assert console_commands(found[3].code) == "cae train \\\n    --out v\n"
    assert [f.info for f in fences("t.md", SAMPLE)] == ["bash", "python", "text", "py", "console"]


def test_a_breaking_block_fails_and_stops_the_blocks_after_it(runner: Runner, monkeypatch):
    doc = "selftest.md"
    cases = [Block(doc, 1, 1, "python", "x = 40\n", None), Block(doc, 2, 2, "shell", "sae-flux --help >/dev/null\n", None),
             Block(doc, 3, 3, "python", "assert x == 41, x\n", None), Block(doc, 4, 4, "shell", "true\n", None)]
    monkeypatch.setitem(globals(), "ALL_BLOCKS", cases)
    run = runner.doc(doc)
    run.run_until(cases[1])
    with pytest.raises(pytest.fail.Exception, match=r"(?s)selftest.md:3 \(line 3\) failed:\nTraceback.*File \"selftest.md\", line 4.*AssertionError: 40"):
        run.run_until(cases[2])
    with pytest.raises(pytest.fail.Exception, match=r"not run: the earlier block selftest.md:3 \(line 3\) failed"):
        run.run_until(cases[3])
    failing = Block("selftest2.md", 1, 1, "shell", "itda build --no-such-flag\n", None)
    assert "exit status 2" in str(runner.doc("selftest2.md").run(failing))
