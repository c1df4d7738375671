"""MkDocs hook: serve the committed tables' plots and data files (results/tables/*.png, .tex, .json) beside the
docs, at results/tables/<name> of the site, so a page links them as `../results/tables/<name>.png` and
`mkdocs build --strict` checks every such link. The tables' Markdown is included into docs/benchmarks/ pages by
pymdownx.snippets instead (mkdocs.yml), so it is not added here as pages of its own."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

SERVED = (".png", ".tex", ".json")


def on_files(files, config):
    root = Path(config["config_file_path"]).parent
    for path in sorted((root / "results" / "tables").iterdir()):
        if path.suffix in SERVED:
            files.append(File(f"results/tables/{path.name}", src_dir=str(root), dest_dir=config["site_dir"],
                              use_directory_urls=config["use_directory_urls"]))
    return files
