"""The documentation site (mkdocs.yml, docs/) builds under `mkdocs build --strict` — a broken link, anchor, snippet
or a page left out of the nav fails it — every committed table and plot of results/tables/ is reachable from it,
and every `python run.py` line of a fenced bash block in docs/ composes as written (Hydra's `--cfg job`: seconds,
nothing runs). The slow commands run in their own `real` tests (test_readme.py, test_readme_own_data.py,
test_faithful.py). Without mkdocs (the `dev` extra: make install) the build tests skip, and fail under CI=true."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import IN_CI, ROOT

DOCS = ROOT / "docs"
TABLES = ROOT / "results" / "tables"


def require_mkdocs() -> None:
    try:
        import material  # noqa: F401  (mkdocs-material: the theme, and pymdown-extensions with it)
        import mkdocs  # noqa: F401
    except ImportError:
        msg = "mkdocs-material is not installed (the `dev` extra: make install)"
        if IN_CI:
            pytest.fail(msg + " — required under CI=true")
        pytest.skip(msg)


def build(config, site) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def pages() -> list:
    return sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)


def test_the_docs_build_strictly(tmp_path):
    require_mkdocs()
    done = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for page in pages():  # every page rendered (a page outside the nav fails --strict already)
        rel = page.relative_to(DOCS).with_suffix("")
        out = tmp_path / "site" / (rel.parent if rel.name == "index" else rel) / "index.html"
        assert out.is_file(), f"{page} was not rendered"
    for served in TABLES.iterdir():  # plots and data files served beside the pages (docs/hooks/results_files.py)
        if served.suffix != ".md":
            assert (tmp_path / "site" / "results" / "tables" / served.name).is_file(), served
    quickstart = (tmp_path / "site" / "quickstart" / "index.html").read_text()
    assert "[xtf] task=gsm8k model=smollm2_135m method=xtf" in quickstart, "README's output block is not included"


def test_a_broken_link_fails_the_build(tmp_path):
    """--strict is what makes the build a check: a copy of the site with one broken link must fail."""
    require_mkdocs()
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    for folder in ("results/tables", "slurm", "eval"):
        (tmp_path / folder).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / folder).symlink_to(ROOT / folder)
    (tmp_path / "README.md").symlink_to(ROOT / "README.md")
    page = tmp_path / "docs" / "pitfalls.md"
    page.write_text(page.read_text() + "\nSee [nowhere](no-such-page.md).\n")
    done = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0 and "no-such-page.md" in done.stdout + done.stderr, done.stderr[-2000:]


def test_every_committed_table_and_plot_is_reachable_from_the_docs():
    text = "\n".join(p.read_text() for p in pages())
    missing = [f.name for f in sorted(TABLES.iterdir())
               if f"results/tables/{f.name}" not in text]  # a snippet include (.md) or a link (.png, .json, .tex)
    assert not missing, f"not reachable from docs/: {missing} (add it to a docs/benchmarks/ page)"


def test_no_link_to_the_shared_folder():
    """The project stands alone: no page and not the README sends a reader to ../shared/DESIGN.md."""
    for path in [ROOT / "README.md", *pages()]:
        assert "shared/DESIGN" not in path.read_text(), path


def docs_run_commands() -> list[tuple[str, str]]:
    """(page, command) for each `python run.py` line of the fenced bash blocks of docs/, and each `xtf` line (the
    same command, installed: written as `python run.py` here)."""
    out = []
    for page in pages():
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                command = line.split(" #", 1)[0].strip()
                if command.startswith("xtf "):
                    command = "python run.py " + command[len("xtf "):]
                if command.startswith("python run.py"):
                    out.append((str(page.relative_to(ROOT)), command))
    return out


def one_job(argv: list[str]) -> list[str]:
    """A multirun's first job: `-m` dropped, each swept value list `k=a,b,c` cut to `k=a` (a list in brackets or
    quotes, `k=[a,b]`, is one value)."""
    out = []
    for arg in argv:
        if arg in ("-m", "--multirun"):
            continue
        key, eq, value = arg.partition("=")
        if eq and "," in value and not value.startswith(("[", "'", '"')):
            value = value.split(",", 1)[0]
        out.append(f"{key}{eq}{value}" if eq else arg)
    return out


def test_the_docs_have_run_commands():
    commands = docs_run_commands()
    assert len(commands) >= 20 and any("method=xtf_official" in c for _, c in commands)


@pytest.mark.parametrize("page,command", docs_run_commands())
def test_docs_run_command_composes(page, command):
    argv = one_job(shlex.split(command)[2:])
    argv = [a for a in argv if a not in ("--cfg", "job")]
    done = subprocess.run([sys.executable, "run.py", *argv, "--cfg", "job"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{page}: {command}\n{done.stdout[-1500:]}{done.stderr[-1500:]}"
