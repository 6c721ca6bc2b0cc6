"""Every fenced code block of README.md and docs/*.md runs, or at least parses, and
gives what the text says.

Rules, by the fence's language (a fence without one fails: decide which it is):

* ``python``: each page's python blocks run in order in one namespace (later blocks
  continue earlier ones), in a temporary working directory; ``pycon`` transcripts run
  through doctest in the same namespace, so their printed output and exceptions are
  checked.
* ``bash`` / ``console``: every command must parse — ``nlframe`` commands (also
  ``.venv/bin/nlframe``, ``python -m nlframe``, ``torchrun ... -m nlframe``) against
  the click command tree (command names, option names, option values, required
  arguments), ``./dev.sh`` against its sub-commands, ``pytest`` against nlframe's
  pytest plugin options and registered markers. Cheap ``nlframe`` commands are run
  through click's ``CliRunner`` in a temporary directory (with ``specs/`` linked in);
  the output lines a ``console`` block shows after a ``$`` command must appear, in
  order (``...`` matches anything). Every command that is not run is listed in
  ``NOT_RUN`` with its reason, and the list must match exactly.
* ``toml``: a whole spec (with ``[model]``) goes through ``nlframe.spec.load_spec``;
  other snippets are parsed with ``tomllib``.
* ``text``: not code (signatures, pseudo-math, trees, sample messages); the sample
  error messages of docs/specs.md are checked against ``nlframe validate`` below.
"""

from __future__ import annotations

import doctest
import io
import json
import importlib
import re
import shlex
import sys
import textwrap
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from nlframe import registry
from nlframe.cli import main
from nlframe.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
LANGS = {"python", "pycon", "bash", "console", "toml", "text"}

# Commands of the docs that are checked to parse but not run: page, the command's first
# line (comment and trailing backslash dropped) -> why.
NOT_RUN = {
    ("README.md", "./dev.sh train"): "trains hope-tiny for 300 steps (~4 min) after creating .venv",
    ("README.md", "./dev.sh test"): "runs the whole test suite (twice in README)",
    ("README.md", "torchrun --nproc_per_node=2 -m nlframe train specs/hope-tiny.toml --out runs/ddp "
                  "--parallel fsdp"): "torchrun, two processes, a full training run",
    ("README.md", ".venv/bin/pytest -m slow"): "the exhaustive slow tests",
    ("README.md", "./dev.sh bench"): "the benchmarks (minutes)",
    ("docs/index.md", "./dev.sh train"): "as in README.md",
    ("docs/index.md", "./dev.sh test"): "as in README.md",
    ("docs/distributed.md", "torchrun --nproc_per_node=4 -m nlframe train specs/hope-small.toml "
                            "--out runs/hope-ddp"): "torchrun, 4 processes, hope-small",
    ("docs/distributed.md", "torchrun --nproc_per_node=4 -m nlframe train specs/hope-small.toml "
                            "--out runs/hope-fsdp --parallel fsdp"): "torchrun, 4 processes, hope-small",
    ("docs/distributed.md", "torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d"):
        "torchrun on two machines",
    ("docs/interop.md", "nlframe train specs/transformer-tiny.toml model.vocab_size=4096"):
        "a full training run (300 steps)",
    ("docs/interop.md", 'nlframe generate runs/tok --prompt "Once upon a time"'):
        "needs the trained run of the command before",
    ("docs/concepts.md", "nlframe bench scan --backends chunked compiled --memory mlp --chunk-size 16"):
        "a benchmark (minutes: the compiled rows compile first)",
    ("docs/concepts.md", "nlframe bench model titans-tiny --seq-len 256 --backends chunked compiled"):
        "a benchmark (minutes: the compiled rows compile first)",
    ("docs/results.md", "nlframe experiments run all --out docs/results"):
        "every experiment at full size (the page's own run time)",
    ("docs/plugins.md", "pytest --nlframe-conformance=optimizer:lion --nlframe-conformance=objective:cosine"):
        "a pytest session; the same suites run in tests/test_conformance.py",
}

# nlframe sub-commands cheap enough to run here (anything with --help is, too).
CHEAP = {("validate",), ("spec", "show"), ("plugins", "list"), ("backends", "list"),
         ("tokenizer", "show"), ("tokenizer", "train")}

# Numbers in sample output that stand for "whatever your data gives".
PLACEHOLDERS = {"12,345,678": r"[\d,]+"}


# -- collecting ------------------------------------------------------------------------------

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[^\s`]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.S | re.M)


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def page_blocks(page: str) -> list[Block]:
    text = (ROOT / page).read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        indent = m.group("indent")
        body = "".join(line[len(indent):] if line.startswith(indent) else line
                       for line in m.group("body").splitlines(keepends=True))
        out.append(Block(page, text.count("\n", 0, m.start()) + 1, m.group("lang"), body))
    return out


BLOCKS = [b for page in PAGES for b in page_blocks(page)]


@dataclass
class Command:
    page: str
    first_line: str  # the key of NOT_RUN
    argv: list[str]
    output: list[str] = field(default_factory=list)  # lines a console block shows after it


def block_commands(block: Block) -> list[Command]:
    commands: list[Command] = []
    lines = block.code.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if block.lang == "console" and not line.startswith("$ "):
            assert commands, f"{block.id}: output before any '$ ' command"
            commands[-1].output.append(line)
            i += 1
            continue
        if block.lang == "console":
            line = line[2:]
        first, whole = line, line
        while whole.rstrip().endswith("\\"):
            i += 1
            whole = whole.rstrip()[:-1] + " " + lines[i]
        i += 1
        argv = shlex.split(whole, comments=True)
        if argv:
            key = re.sub(r"\s+#.*$", "", first).rstrip().removesuffix("\\")
            commands.append(Command(block.page, " ".join(key.split()), argv))
    return commands


def nlframe_args(argv: list[str]) -> list[str] | None:
    """The arguments after ``nlframe`` when ``argv`` runs nlframe, else None."""
    if argv[0] in ("nlframe", ".venv/bin/nlframe"):
        return argv[1:]
    if Path(argv[0]).name.startswith("python") and argv[1:3] == ["-m", "nlframe"]:
        return argv[3:]
    if argv[0] == "torchrun":
        i = argv.index("-m")
        assert argv[i + 1] == "nlframe", argv
        return argv[i + 2:]
    return None


# -- checking a command line -----------------------------------------------------------------

def parse_nlframe(args: list[str]) -> tuple[str, ...]:
    """Check ``nlframe ARGS`` against the click tree without running it; return the
    command path (e.g. ``("tokenizer", "train")``)."""
    cmd: click.Command = main
    # the group's own context settings (-h): a Context without them would make click cache
    # a --help-only option on every command it parses, which the CLI reference would show
    ctx = click.Context(main, info_name="nlframe", **main.context_settings)
    path: list[str] = []
    i = 0
    while isinstance(cmd, click.Group) and i < len(args) and not args[i].startswith("-"):
        sub = cmd.get_command(ctx, args[i])
        assert sub is not None, f"nlframe {' '.join(path)} has no command {args[i]!r}"
        path.append(args[i])
        cmd, i = sub, i + 1
        ctx = click.Context(cmd, info_name=path[-1], parent=ctx)
    rest = args[i:]
    if "--help" in rest or "-h" in rest:
        return tuple(path)
    if tuple(path) == ("bench",) and rest and not rest[0].startswith("-"):
        bench = importlib.import_module(f"nlframe.bench.{rest[0]}")  # its own argparse parser
        try:
            bench.parser().parse_args(rest[1:])
        except SystemExit:
            raise AssertionError(f"nlframe {' '.join(args)}: the benchmark's parser refuses it") from None
        return (*path, rest[0])
    assert not isinstance(cmd, click.Group) or "--version" in rest or "-V" in rest, (
        f"nlframe {' '.join(path)} needs a command")
    try:
        opts, extra, _ = cmd.make_parser(ctx).parse_args(list(rest))
        assert not extra, f"unexpected arguments {extra}"
        for p in cmd.params:
            value = opts.get(p.name)
            given = isinstance(value, (str, tuple, list, bool))
            assert given or not p.required, f"missing {p.human_readable_name}"
            if given and isinstance(p, click.Option) and not isinstance(p.type, click.Path):
                p.type_cast_value(ctx, value)  # Choice, IntRange, ... as click would check them
    except click.ClickException as exc:
        raise AssertionError(f"nlframe {' '.join(args)}: {exc.format_message()}") from None
    return tuple(path)


def _dev_sh_commands() -> set[str]:
    return set(re.findall(r"^  (\w+)\)$", (ROOT / "dev.sh").read_text(), re.M))


def _pytest_plugin_options() -> set[str]:
    from nlframe.testing import pytest_plugin

    names: set[str] = set()

    class Group:
        def addoption(self, *opts, **_):
            names.update(opts)

    class Parser(Group):
        def getgroup(self, *_, **__):
            return Group()

        def addini(self, *_, **__):
            pass

    pytest_plugin.pytest_addoption(Parser())
    return names


def check_parses(cmd: Command) -> tuple[str, ...] | None:
    """Assert the command parses; return the nlframe command path, or None for other
    programs (which are never run)."""
    args = nlframe_args(cmd.argv)
    if args is not None:
        return parse_nlframe(args)
    prog, rest = cmd.argv[0], cmd.argv[1:]
    if prog == "./dev.sh":
        assert rest and rest[0] in _dev_sh_commands(), f"dev.sh has no command {rest[:1]}"
        for a in rest[1:]:  # ./dev.sh train passes its arguments to scripts/quickstart.py
            assert not a.startswith("--") or a in (ROOT / "scripts/quickstart.py").read_text(), a
    elif Path(prog).name == "pytest":
        markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
        marker_names = {m.split(":")[0].strip() for m in markers.get("markers", [])}
        it = iter(rest)
        for a in it:
            if a == "-m":
                assert next(it) in marker_names, "unregistered pytest marker"
            elif a.startswith("--nlframe"):
                assert a.split("=")[0] in _pytest_plugin_options(), f"nlframe's pytest plugin has no {a}"
            else:
                assert not a.startswith("-"), f"no rule for pytest option {a}"
    else:
        raise AssertionError(f"{cmd.page}: no rule for the command {' '.join(cmd.argv)!r}")
    return None


def _line_pattern(expected: str) -> re.Pattern:
    """``...`` matches anything, a placeholder number any number, runs of spaces any run."""
    parts = re.split(r"(\.\.\.|" + "|".join(map(re.escape, PLACEHOLDERS)) + ")", expected.strip())
    regex = "".join(".*" if p == "..." else PLACEHOLDERS.get(p) or re.sub(r"(?:\\\s)+", r"\\s+", re.escape(p))
                    for p in parts)
    return re.compile(regex)


def assert_output_shows(output: str, expected: list[str], what: str) -> None:
    """Every non-empty expected line (``...`` lines skipped) matches an output line, in
    order; runs of spaces compare equal (tables are padded to the longest entry)."""
    lines = output.splitlines()
    pos = 0
    for exp in expected:
        if not exp.strip() or exp.strip() == "...":
            continue
        pattern = _line_pattern(exp)
        for j in range(pos, len(lines)):
            if pattern.fullmatch(lines[j].strip()):
                pos = j + 1
                break
        else:
            raise AssertionError(f"{what}: no line {exp!r} (in order) in the output:\n{output}")


# -- the tests -------------------------------------------------------------------------------

def test_every_block_is_collected_with_a_known_language():
    assert {"README.md", "docs/concepts.md", "docs/interop.md", "docs/specs.md"} <= {b.page for b in BLOCKS}
    unknown = [f"{b.id} ```{b.lang}" for b in BLOCKS if b.lang not in LANGS]
    assert not unknown, ("fence these blocks with one of " + ", ".join(sorted(LANGS))
                         + " (```text when not code): " + ", ".join(unknown))


def test_not_run_list_is_exact():
    commands = [c for b in BLOCKS if b.lang in ("bash", "console") for c in block_commands(b)]
    not_run = set()
    for c in commands:
        path = check_parses(c)
        args = nlframe_args(c.argv)
        if path is None or c.argv[0] == "torchrun" or not (
                path in CHEAP or "--help" in args or "-h" in args):
            not_run.add((c.page, c.first_line))
    listed = {key for key in NOT_RUN if (ROOT / key[0]).is_file()}  # docs/index.md is new
    assert not_run == listed, (
        f"not listed: {sorted(not_run - set(NOT_RUN))}; listed but not found: {sorted(listed - not_run)}")


PY_PAGES = sorted({b.page for b in BLOCKS if b.lang in ("python", "pycon")})


def _claims_readme(ns):
    assert ns["y2"].shape == (2, 64, 128) and torch.isfinite(ns["y2"]).all()
    assert not torch.allclose(ns["y"], ns["y2"])  # "the memory writes itself while it reads"


def _claims_interop(ns):
    assert ns["losses"] and all(map(torch.isfinite, map(torch.tensor, ns["losses"])))
    assert ns["y"].shape == (2, 16, 64)  # the Titans layer over the `module` memory
    assert not torch.allclose(ns["after"][:, 4:], ns["before"][:, 4:])  # changed by the writes


CLAIMS = {"README.md": _claims_readme, "docs/interop.md": _claims_interop}


@pytest.mark.parametrize("page", PY_PAGES)
def test_python_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__doc_example__"}
    for block in (b for b in BLOCKS if b.page == page):
        if block.lang == "python":
            with redirect_stdout(io.StringIO()):
                exec(compile(block.code, f"{ROOT / page}:{block.line}", "exec"), ns)  # noqa: S102
        elif block.lang == "pycon":
            test = doctest.DocTestParser().get_doctest(block.code, ns, block.id, str(ROOT / page),
                                                       block.line)
            report = io.StringIO()
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
            runner.run(test, out=report.write, clear_globs=False)
            assert runner.failures == 0, report.getvalue()
    if page in CLAIMS:
        CLAIMS[page](ns)


TOML_BLOCKS = [b for b in BLOCKS if b.lang == "toml"]


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=[b.id for b in TOML_BLOCKS])
def test_toml_examples(block, tmp_path):
    data = tomllib.loads(block.code)
    if "model" in data:
        path = tmp_path / "spec.toml"
        path.write_text(block.code)
        load_spec(path)
    elif "project" in data and block.page == "docs/plugins.md":  # the example plugin's own table
        lion = tomllib.loads((ROOT / "examples/nlframe-lion/pyproject.toml").read_text())
        assert data["project"]["entry-points"] == lion["project"]["entry-points"]


EVIL = """
import nlframe

class FakeAdamW:
    '''Not AdamW.'''

@nlframe.hookimpl
def nlframe_register_optimizer(register):
    register("adamw", FakeAdamW)
"""


def _install_evil(tmp_path: Path, mp: pytest.MonkeyPatch) -> None:
    """A distribution ``nlframe-evil`` (entry point ``evil``) registering ``adamw``."""
    site = tmp_path / "site"
    info = site / "nlframe_evil-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nlframe-evil\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[nlframe]\nevil = nlframe_evil_mod\n")
    (site / "nlframe_evil_mod.py").write_text(EVIL)
    mp.syspath_prepend(str(site))
    mp.setattr(registry, "_REGISTRY", None)
    mp.delitem(sys.modules, "nlframe_evil_mod", raising=False)


def _corpus(tmp_path: Path, mp: pytest.MonkeyPatch) -> None:
    """``my_corpus``: enough text (nlframe's own sources) for 4096 BPE merges."""
    (tmp_path / "my_corpus").mkdir()
    text = "".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "nlframe").rglob("*.py")))
    (tmp_path / "my_corpus" / "a.txt").write_text(text, encoding="utf-8")


# Command (page, first line) -> what it needs in its working directory.
SETUP = {
    ("docs/plugins.md", "nlframe plugins list"): _install_evil,
    ("docs/interop.md", "nlframe tokenizer train text:my_corpus --vocab 4096 --out my_tok"): _corpus,
}

CLI_BLOCKS = [b for b in BLOCKS if b.lang in ("bash", "console")]


@pytest.mark.parametrize("block", CLI_BLOCKS, ids=[b.id for b in CLI_BLOCKS])
def test_commands(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "specs").symlink_to(ROOT / "specs")
    for cmd in block_commands(block):
        check_parses(cmd)
        if (cmd.page, cmd.first_line) in NOT_RUN:
            continue
        args = []
        for a in nlframe_args(cmd.argv):  # the shell's globbing, run in this directory
            args += sorted(glob(a)) if any(ch in a for ch in "*?") and glob(a) else [a]
        with pytest.MonkeyPatch.context() as mp:
            if (cmd.page, cmd.first_line) in SETUP:
                SETUP[cmd.page, cmd.first_line](tmp_path, mp)
            result = CliRunner().invoke(main, args)
        what = f"{cmd.page}: $ {' '.join(cmd.argv)}"
        failing = any(line.startswith("Error:") for line in cmd.output)
        assert result.exit_code == (1 if failing else 0), f"{what}\n{result.output}{result.exception!r}"
        assert "Traceback" not in result.output, what
        assert_output_shows(result.output, cmd.output, what)
        if "--json" in args:
            json.loads(result.output)


# The sample errors of docs/specs.md: each line -> a spec (in spec.toml) that gives it.
_BASE = '[model]\ndim = 64\n[[model.blocks]]\ntype = "mlp"\n'
SPEC_ERRORS = {
    "model.blocks[1].haeds": _BASE + '[[model.blocks]]\ntype = "attention"\nhaeds = 4\n',
    "model.dim": '[model]\ndim = "64"\n[[model.blocks]]\ntype = "mlp"\n',
    "model.blocks[0].memory.type": _BASE.replace('"mlp"', '"titans"\nmemory = {type = "mpl"}'),
    "model.blocks[1].heads": _BASE.replace("64", "30") + '[[model.blocks]]\ntype = "attention"\nheads = 4\n',
    "train.lr": _BASE + "[train]\nlr = inf\n",
    "train.optimizer_kwargs.beta": _BASE + "[train]\noptimizer_kwargs = {beta = [0.9, 0.99]}\n",
    "train.device": _BASE + '[train]\ndevice = "tpu:7"\n',
    "train.data": _BASE + '[train]\ndata = "txt"\n',
}


def test_spec_error_samples_are_what_validate_prints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    samples = [line for b in BLOCKS if b.page == "docs/specs.md" and b.lang == "text"
               for line in b.code.splitlines() if line.startswith("spec.toml: ")]
    keys = [line.split(": ")[1] for line in samples]
    assert sorted(keys) == sorted(SPEC_ERRORS), "a sample error of docs/specs.md without a spec here"
    for line, key in zip(samples, keys):
        Path("spec.toml").write_text(SPEC_ERRORS[key])
        result = CliRunner().invoke(main, ["validate", "spec.toml"])
        assert result.exit_code == 2, result.output
        assert_output_shows(result.output, [line], f"docs/specs.md: {key}")

    # the refusal of a spec too large for this machine: the same words, other numbers
    (huge,) = [line for b in BLOCKS if b.page == "docs/specs.md" and b.lang == "text"
               for line in b.code.splitlines() if line.startswith("huge.toml")]
    Path("huge.toml").write_text(textwrap.dedent("""\
        [model]
        vocab_size = 256
        dim = 400000
        [[model.blocks]]
        type = "mlp"
        repeat = 200
        """))
    result = CliRunner().invoke(main, ["validate", "huge.toml"])
    assert result.exit_code == 2
    pattern = re.escape(re.sub(r"\d[\d,.]*", "NUM", huge)).replace("NUM", r"[\d,.]+")
    pattern = pattern.replace(r"\(RAM\)", r"\((RAM|GPU)\)")
    assert re.fullmatch(pattern, result.output.strip()), (pattern, result.output)
