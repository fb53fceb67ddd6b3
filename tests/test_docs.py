"""The README and the documentation site: short, opening with the two start commands, a results
table generated from the benchmark files, and a site that builds with no broken link."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_LINES = 300

# [text](target) and ![alt](target), the target up to a space or the closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _relative_links(markdown: str) -> list[str]:
    """The README's links that point into the repository (not URLs, not in-page anchors), outside
    code blocks."""
    prose = re.sub(r"```.*?```", "", markdown, flags=re.S)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    return [
        t for t in LINK.findall(prose) if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")
    ]


def _anchors(page: Path) -> set[str]:
    """The heading ids MkDocs gives a page (its toc extension's slugs)."""
    from markdown.extensions.toc import slugify

    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M)
    return {slugify(re.sub(r"[`*]", "", h), "-") for h in headings}


def test_readme_is_short_and_opens_with_the_two_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines (at most {MAX_LINES})"
    head = lines[:15]
    demo = next(i for i, line in enumerate(head) if line.startswith("make demo "))
    test = next(i for i, line in enumerate(head) if line.startswith("make test "))
    assert demo < test
    fence = next(i for i, line in enumerate(head) if line.startswith("```"))
    assert fence < demo and head[test + 1].startswith("```"), "the two commands are one code block"
    assert "runs the default simulation" in head[demo]
    assert "runs the test suite" in head[test]


def test_readme_results_table_is_generated() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_results.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_gen_results_check_fails_on_a_stale_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_results
    finally:
        sys.path.remove(str(ROOT / "docs"))
    text = README.read_text(encoding="utf-8")
    stale = tmp_path / "README.md"
    stale.write_text(
        text.replace(gen_results.END, "| a row typed by hand |\n" + gen_results.END), encoding="utf-8"
    )
    monkeypatch.setattr(gen_results, "README", stale)
    assert gen_results.main(["--check"]) == 1
    assert gen_results.main([]) == 0
    assert stale.read_text(encoding="utf-8") == text
    assert gen_results.main(["--check"]) == 0


def test_readme_relative_links_exist() -> None:
    links = _relative_links(README.read_text(encoding="utf-8"))
    assert links, "the README links into docs/"
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (ROOT / path).resolve()
        if not target.exists():
            broken.append(link)
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(link)
    assert not broken, f"README.md links to missing files or anchors: {broken}"


def test_docs_build_strict(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    built = {p.name for p in (tmp_path / "site").glob("*.html")}
    pages = {p.stem + ".html" for p in (ROOT / "docs").glob("*.md")}
    assert pages <= built, f"pages not built: {sorted(pages - built)}"


def _documented_command_lines() -> list[tuple[str, list[str]]]:
    """Every ``mmfl ...`` line of a shell block in the README and the docs, continuation lines
    joined, comments and leading ``VAR=value`` assignments dropped, as (page, argv)."""
    import shlex

    found = []
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
            text = re.sub(r"<<'(\w+)'\n.*?\n\1\n", "\n", block, flags=re.S)  # here-documents are data
            for line in text.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                while words and re.match(r"^[A-Z_]+=", words[0]):
                    words = words[1:]
                for i, word in enumerate(words):  # the command ends at a redirection, pipe or list
                    if word in {">", ">>", "<", "|", "&&", "||", ";", "2>&1"}:
                        words = words[:i]
                        break
                if words[:1] == ["mmfl"]:
                    found.append((page.name, [w for w in words[1:] if w != "..."]))
    return found


def _parse(argv: list[str]) -> None:
    """Parse ``mmfl argv`` down to its command without running anything: an unknown command or
    option, a missing argument or a bad choice raises click's usage error. A path that must exist
    (the docs name the reader's own folders) is not one."""
    import click
    import typer

    from mmfl.cli import app

    command: click.Command = typer.main.get_command(app)
    name, args, parent = "mmfl", list(argv), None
    while True:
        try:
            ctx = command.make_context(name, args, parent=parent)
        except click.BadParameter as err:
            if "does not exist" in str(err.message):
                return
            raise
        if not isinstance(command, click.Group):
            return
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            return
        name, command, args = command.resolve_command(ctx, rest)
        assert command is not None, f"no command {name!r}"
        parent = ctx


def test_every_documented_command_line_names_real_commands_and_options() -> None:
    """The reference blocks (the operator's, the site's, the simulate options) are not run, but
    each of their ``mmfl`` lines must parse: no renamed command or option goes unnoticed."""
    import click

    lines = _documented_command_lines()
    assert len(lines) >= 30 and {page for page, _ in lines} >= {"README.md", "operate.md", "site.md"}
    wrong = []
    for page, argv in lines:
        try:
            _parse(argv)
        except click.UsageError as err:
            wrong.append(f"{page}: mmfl {' '.join(argv)}: {err.format_message()}")
    assert not wrong, "\n".join(wrong)


def test_a_renamed_option_in_the_docs_is_caught() -> None:
    import click

    _parse(["server", "status", "--dir", "/srv/mmfl"])
    with pytest.raises(click.UsageError, match="--folder"):
        _parse(["server", "status", "--folder", "/srv/mmfl"])
    with pytest.raises(click.UsageError):
        _parse(["server", "stauts", "--dir", "/srv/mmfl"])
