"""Every code block of README.md and docs/*.md runs, or is checked, as a test.

The fence's info string says how (the table in docs/DEVELOPMENT.md, "Code
blocks in the docs are tests"): python blocks run in order in one namespace
per page, in a temporary folder; toml blocks are validated as configs the way
``ch transform`` does before step 1; bash blocks are checked without running
(``./ch`` through the command-line parser and the config it names); console
blocks run and their output is compared. A block that must not run says why
(``python no-run: REASON``); `MAX_NOT_RUN` counts them, so a new one is a
decision, not an accident. Relative links and images must point at files (and
headings) that exist.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from machop.actions.common import check_names
from machop.actions.transform import plan
from machop.cli import build_parser, main, overrides_from_args
from machop.config import Config, ConfigError, from_dict, load_config

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
# docs/*_additions.md are drafts other pages are merged from, not pages
PAGES = [ROOT / "README.md"] + sorted(p for p in (ROOT / "docs").glob("*.md") if not p.name.endswith("_additions.md"))
OPTIONS = {"python": {"file"}, "toml": {"file", "invalid"}, "bash": set(), "console": {"exit"}, "text": set()}
MAX_NOT_RUN = 2  # docs/YOUR_OWN_MODEL.md's compress.py and use.py: test/test_own_model_example.py runs them


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    options: dict[str, str] = field(default_factory=dict)
    not_run: str | None = None  # the reason given after ``no-run:``
    code: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, with their info strings parsed: ``LANG [key=value | flag]... [no-run: REASON]``."""
    found, current, lines = [], None, []
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if current is None and line.startswith("```"):
            info, _, reason = line[3:].partition("no-run:")
            words = info.split()
            current = Block(page, number, words[0] if words else "", not_run=reason.strip() if _ else None)
            for word in words[1:]:
                key, _, value = word.partition("=")
                current.options[key] = value
            lines = []
        elif current is not None and line.strip() == "```":
            current.code = "\n".join(lines) + "\n"
            found.append(current)
            current = None
        elif current is not None:
            lines.append(line)
    assert current is None, f"{page.name}:{current.line}: the block is not closed"
    return found


ALL = [b for page in PAGES for b in blocks(page)]


def test_the_pages_are_there():
    names = {p.name for p in PAGES}
    assert {"README.md", "CONFIGURATION.md", "YOUR_OWN_MODEL.md", "COMMAND_LINE.md", "PYTHON.md", "FORMAT.md",
            "DATA_AND_MODELS.md", "DEVELOPMENT.md", "RESULTS.md", "SPEEDUP.md"} <= names
    assert sum(b.lang == "python" for b in ALL) >= 5 and sum(b.lang == "toml" for b in ALL) >= 10


def test_every_block_says_what_it_is_and_why_it_does_not_run():
    for b in ALL:
        assert b.lang in OPTIONS, f"{b.where}: fence language {b.lang!r}; use one of {', '.join(OPTIONS)}"
        unknown = set(b.options) - OPTIONS[b.lang]
        assert not unknown, f"{b.where}: unknown fence option {', '.join(sorted(unknown))}"
        assert b.not_run != "", f"{b.where}: no-run needs a reason"
    not_run = [f"{b.where}: {b.not_run}" for b in ALL if b.not_run is not None]
    print("\nblocks not run:\n" + "\n".join(not_run))
    assert len(not_run) <= MAX_NOT_RUN, "a block more is not run:\n" + "\n".join(not_run)


def test_the_blocks_not_run_here_are_run_elsewhere():
    for b in ALL:
        if b.not_run is not None and (m := re.search(r"run by (test/\S+\.py)", b.not_run)):
            assert b.page.name in (ROOT / m.group(1)).read_text(), f"{b.where}: {m.group(1)} does not read {b.page.name}"


# ---- toml ----

def validate_config(b: Block, data: dict) -> None:
    """What ``ch transform`` checks before it builds a model: the top-level keys, every [passes.*] table."""
    config = from_dict(Config, data)
    check_names(config)
    if config.passes:
        plan(config)


def check_toml(b: Block, folder: Path) -> None:
    data = tomllib.loads(b.code)
    if "file" in b.options:
        (folder / b.options["file"]).write_text(b.code)
    if "invalid" in b.options:
        with pytest.raises(ConfigError):
            validate_config(b, data)
        return
    try:
        validate_config(b, data)
    except ConfigError as e:
        pytest.fail(f"{b.where}: {e}")


# ---- bash: checked, not run ----

def extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def check_command(b: Block, words: list[str]) -> None:
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # VAR=value before the command
        words = words[1:]
    what = f"{b.where}: {shlex.join(words)}"
    if words[0] == "./ch":
        try:
            args = build_parser().parse_args(words[1:])
        except SystemExit as e:
            assert e.code == 0, f"{what}: the command-line parser refuses it"
            return
        if args.action == "setup":
            return
        config_path = None if args.config is None else ROOT / args.config
        try:
            config = load_config(config_path, overrides_from_args(args))
            check_names(config)
            if config_path is not None:
                plan(config)
        except ConfigError as e:
            pytest.fail(f"{what}: {e}")
    elif words[0] == "python":
        if words[1] == "-m":
            assert importlib.util.find_spec(words[2]) is not None, f"{what}: no module {words[2]}"
        else:
            assert (ROOT / words[1]).is_file(), f"{what}: no file {words[1]}"
    elif words[:3] == ["pip", "install", "-e"]:
        wanted = re.fullmatch(r"\.(?:\[(.*)\])?", words[3])
        assert wanted, f"{what}: installs something other than this repository"
        assert set(filter(None, (wanted.group(1) or "").split(","))) <= extras(), f"{what}: no such extra"
    else:
        assert shutil.which(words[0]), f"{what}: no command {words[0]}"


def check_bash(b: Block, folder: Path) -> None:
    syntax = subprocess.run(["bash", "-n"], input=b.code, text=True, capture_output=True)
    assert syntax.returncode == 0, f"{b.where}: {syntax.stderr}"
    for line in b.code.splitlines():
        words = shlex.split(line, comments=True)
        assert not {"|", ";", "||"} & set(words), f"{b.where}: one command (or a && b) per line"
        command: list[str] = []
        for word in words + ["&&"]:
            if word == "&&":
                if command:
                    check_command(b, command)
                command = []
            else:
                command.append(word)


# ---- console: run, output compared ----

def matches(expected: list[str], output: str) -> bool:
    """``output`` is ``expected``, where a line ``...`` is any lines and ``...`` within a line any text."""
    pattern = "".join(r"(?:[^\n]*\n)*?" if line.strip() == "..." else
                      ".*?".join(map(re.escape, line.rstrip().split("..."))) + r"[ \t]*\n" for line in expected)
    text = "".join(line.rstrip() + "\n" for line in output.splitlines())
    return re.fullmatch(pattern, text) is not None


def run_ch(argv: list[str], capfd) -> tuple[int, str]:
    """``./ch`` in this process (seconds instead of a fresh interpreter importing torch)."""
    machop_logger = logging.getLogger("machop")
    level = machop_logger.level
    capfd.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: --help, a bad option
        code = e.code
    finally:
        machop_logger.setLevel(level)
    out = capfd.readouterr()
    return code, out.out + out.err


def check_console(b: Block, folder: Path, capfd) -> None:
    commands: list[tuple[str, list[str]]] = []
    for line in b.code.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        else:
            assert commands, f"{b.where}: output before the first '$ ' command"
            commands[-1][1].append(line)
    for command, expected in commands:
        words = shlex.split(command)
        if words[0] == "./ch":
            code, output = run_ch(words[1:], capfd)
            want = int(b.options.get("exit", 0))
        else:
            done = subprocess.run(command, shell=True, cwd=folder, capture_output=True, text=True, timeout=60)
            code, output, want = done.returncode, done.stdout + done.stderr, 0
        assert code == want, f"{b.where}: `{command}` exited {code}, not {want}:\n{output[-3000:]}"
        assert matches(expected, output), f"{b.where}: `{command}` printed\n{output[-3000:]}\nnot\n" + "\n".join(expected)


def test_matches_reads_ellipses_as_the_docs_mean_them():
    assert matches(["a: ... bytes"], "a: 12 bytes\n")
    assert not matches(["a: ... bytes"], "a: 12 bytes\nb\n")
    assert matches(["...", "last"], "x\ny\nlast\n") and matches(["..."], "")
    assert not matches(["first"], "second\n")


# ---- python: run in order, one namespace per page ----

def run_python(b: Block, namespace: dict, folder: Path) -> None:
    if "file" in b.options:
        (folder / b.options["file"]).write_text(b.code)
    exec(compile(b.code, b.where, "exec"), namespace)


RUNNABLE = [p for p in PAGES if any(b.lang != "text" and b.not_run is None for b in blocks(p))]


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_page_blocks(page, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # a block written as a file is importable by the next
    modules = set(sys.modules)
    namespace: dict = {"__name__": "__main__"}
    try:
        for b in blocks(page):
            if b.not_run is not None:
                if "file" in b.options:
                    (tmp_path / b.options["file"]).write_text(b.code)
                continue
            if b.lang == "python":
                run_python(b, namespace, tmp_path)
            elif b.lang == "toml":
                check_toml(b, tmp_path)
            elif b.lang == "bash":
                check_bash(b, tmp_path)
            elif b.lang == "console":
                check_console(b, tmp_path, capfd)
    finally:
        for name in set(sys.modules) - modules:  # the page's own modules (mynet): another page may have its own
            if str(tmp_path) in str(getattr(sys.modules[name], "__file__", "") or ""):
                del sys.modules[name]


# ---- links ----

def anchors(page: Path) -> set[str]:
    """GitHub's ids of a page's headings."""
    heads = re.findall(r"^#+ (.*)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_point_at_what_exists(page):
    text = re.sub(r"`[^`]*`", "", re.sub(r"```.*?```", "", page.read_text(), flags=re.S))
    for target in re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'src="([^"]+)"', text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.relative_to(ROOT)}: link to {target}: no such file"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{page.relative_to(ROOT)}: link to {target}: no such heading"
