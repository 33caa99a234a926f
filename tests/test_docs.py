"""The README and docs/: a short front page, links that resolve, code that compiles, a quick start that runs.

What a newcomer meets first: every link in README.md and docs/*.md must lead somewhere, every Python block
must at least be Python, every file, module, command and make target a README command names must exist,
and the README's first quick start must run as written.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

_FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$", re.MULTILINE)
_EXTERNAL = ("http://", "https://", "mailto:")
# Paths into the repository as shell commands name them (`examples/x.yaml`, `benchmarks/bench_x.py`).
_REPO_PATH = re.compile(r"(?<![\w./~-])((?:examples|benchmarks|tests|hf_embfuse|docs)/[\w./*-]*\w)")
_MODULE = re.compile(r"python -m ([\w.]+)")
_MAKE = re.compile(r"\bmake ((?:[\w-]+ ?)+)")
_SUBCOMMAND = re.compile(r"hf-embfuse (\w+)")


def blocks(text: str, language: str) -> list[str]:
    """The bodies of the fenced blocks of `language` (`python`, `bash`) in `text`."""
    return [body for lang, body in _FENCE.findall(text) if lang == language]


def code_blocks(page: Path, language: str) -> list[str]:
    return blocks(page.read_text(encoding="utf-8"), language)


def prose(page: Path) -> str:
    """The page without its fenced blocks: a `#` in a shell block is no heading, `[x](y)` in code no link."""
    return _FENCE.sub("", page.read_text(encoding="utf-8"))


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation dropped, spaces as hyphens,
    `-1`, `-2`, ... for repeated headings."""
    seen: dict[str, int] = {}
    result = set()
    for _, title in _HEADING.findall(prose(page)):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def test_readme_is_at_most_250_lines():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_the_readme_links_every_docs_page():
    linked = {Path(target.split("#")[0]).name for target in _LINK.findall(prose(README))}
    missing = [page.name for page in PAGES[1:] if page.name not in linked]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_relative_links_point_at_files_and_headings_that_exist(page):
    broken = []
    for target in _LINK.findall(prose(page)):
        if target.startswith(_EXTERNAL):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with that anchor in {file.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_python_blocks_compile(page):
    blocks = code_blocks(page, "python")
    for number, block in enumerate(blocks, 1):
        compile(block, f"{page.name}, python block {number}", "exec")  # a SyntaxError names the block


def _package_names() -> set[str]:
    """`hf_embfuse.__all__`, read from the source (importing the package here would cost seconds)."""
    tree = ast.parse((ROOT / "hf_embfuse" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("hf_embfuse/__init__.py has no __all__")


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_python_blocks_import_modules_and_names_that_exist(page):
    public, missing = _package_names(), []
    for block in code_blocks(page, "python"):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "hf_embfuse":
                if not _is_module(node.module):
                    missing.append(f"module {node.module}")
                elif node.module == "hf_embfuse":
                    missing += [f"hf_embfuse.{a.name}" for a in node.names if a.name not in public]
            elif isinstance(node, ast.Import):
                missing += [
                    f"module {a.name}"
                    for a in node.names
                    if a.name.split(".")[0] == "hf_embfuse" and not _is_module(a.name)
                ]
    assert not missing, f"{page.name} imports what does not exist: {missing}"


def _make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([\w-]+):", makefile, re.MULTILINE))


def _cli_subcommands() -> set[str]:
    cli = (ROOT / "hf_embfuse" / "cli.py").read_text(encoding="utf-8")
    return set(re.findall(r"add_parser\(\s*\"(\w+)\"", cli))


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_shell_commands_name_files_modules_commands_and_make_targets_that_exist(page):
    targets, subcommands = _make_targets(), _cli_subcommands()
    missing = []
    for block in code_blocks(page, "bash"):
        for path in _REPO_PATH.findall(block):
            if not list(ROOT.glob(path)):
                missing.append(f"file {path}")
        for module in _MODULE.findall(block):
            if not (ROOT / module.replace(".", "/")).with_suffix(".py").is_file():
                missing.append(f"module {module}")
        for words in _MAKE.findall(block):
            missing += [f"make target {word}" for word in words.split() if word not in targets]
        missing += [f"hf-embfuse {name}" for name in _SUBCOMMAND.findall(block) if name not in subcommands]
    assert not missing, f"{page.name} names what does not exist: {missing}"


def test_the_checks_see_what_they_check():
    # Guards against a regex that silently matches nothing: the README has each kind of thing checked.
    assert len(code_blocks(README, "python")) >= 2 and len(code_blocks(README, "bash")) >= 3
    named = "\n".join(code_blocks(README, "bash"))
    assert _REPO_PATH.findall(named) and _MAKE.findall(named) and _SUBCOMMAND.findall(named)
    assert "docs/vocabulary-transfer.md" in _LINK.findall(prose(README))
    assert "the-recipe-fields" in anchors(ROOT / "docs" / "vocabulary-transfer.md")


def _quick_start() -> str:
    """The first Python block under the README's "Quick start: new tokens"."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Quick start: new tokens") :]
    return blocks(section, "python")[0]


@pytest.mark.integration
def test_the_readme_quick_start_runs_as_written(tmp_path, monkeypatch, capsys):
    # The packaged MiniLM and GloVe (installed by `make demo` / `make test`); about 15 s on one thread.
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_quick_start(), "README.md quick start", "exec"), namespace)
    result = namespace["result"]
    words = ["photosynthesis", "chlorophyll", "mitochondria"]
    assert result.transfer["added_tokens"]["added"] == words
    assert result.tokenizer.tokenize("photosynthesis needs chlorophyll") == [
        "photosynthesis",
        "needs",
        "chlorophyll",
    ]
    printed = capsys.readouterr().out
    assert str(words) in printed  # the comment in the README says what it prints
    assert (tmp_path / "minilm-new-words" / "config.json").is_file()
    assert (tmp_path / "minilm-new-words" / "modeling_embfuse.py").is_file()
