"""Methods that change the training set before tokenisation. DA (data augmentation, Dai et al. 2025; a column of
the XTF paper's Table 1): each training answer is paraphrased by a generator LM, and a paraphrase is added as a
new example only when the task's answer extractor reads the same final answer from it as from the original.

    python run.py method=da model=smollm2_135m task=gsm8k data.limit=8          # generator: the base model
    python run.py method=da method.da.generator=smollm2_135m ...                # any conf/model config

The method itself is xtf/methods/da.py (its registry entry's `augment` calls `paraphrase`; the pipeline calls the
`augment` of any method that has one, before tokenisation). The augmented set is cached by content
(xtf.cache.cached_dir: generator identity, the examples, the instruction, decoding, the extractor's version), so
seeds and re-runs generate nothing.

The filter (`answer_preserved`): the task's primary extractor (the first of `task.EXTRACTORS`) on the
paraphrase must give, after xtf.generation.normalise, the value it gives on the original response — or, when it
reads nothing there (e.g. GSM8K's released format has no "#### N" line), the example's gold answer. A paraphrase
with no readable answer is rejected.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from omegaconf import OmegaConf

from xtf import cache, models
from xtf.config import ModelConfig, build_dataclass
from xtf.errors import ConfigError
from xtf.generation import generate_many, normalise
from xtf.scoring import model_identity

log = logging.getLogger(__name__)
AUGMENT_VERSION = 1
# The instruction given to the generator (a user turn under a chat template). The answer's final line is kept
# verbatim so that the extractor can check it.
INSTRUCTION = ("Rewrite the answer below in different words. Keep every reasoning step, every number and the "
               "final answer exactly as they are, including the last line.\n\nQuestion:\n{prompt}\n\nAnswer:\n"
               "{response}\n\nRewritten answer:\n")
KEEP_KEYS = ("prompt", "answer", "eos")  # what a paraphrase inherits (not ids, noise truth or spans)


def answer_preserved(extract, normalise, original: str, paraphrase: str, gold: str) -> bool:
    """True iff `extract` reads from `paraphrase` the answer it reads from `original` (or `gold` when it reads
    nothing from the original), both normalised."""
    got = extract(paraphrase)
    if got is None:
        return False
    want = extract(original)
    return normalise(got) == normalise(want if want is not None else gold)


def paraphrase_set(examples: list[dict], generate, extract, normalise, n: int) -> tuple[list[dict], dict]:
    """Originals + the kept paraphrases (ids "<id>-da<k>"), and the counts. `generate(prompts, n)` returns n
    texts per prompt (list[list[str]])."""
    prompts = [INSTRUCTION.format(prompt=ex["prompt"].strip(), response=ex["response"].strip()) for ex in examples]
    outputs = generate(prompts, n)
    added, rejected_no_answer, rejected_other = [], 0, 0
    for ex, texts in zip(examples, outputs):
        lead = ex["response"][: len(ex["response"]) - len(ex["response"].lstrip())]  # the task's leading space
        for k, text in enumerate(texts):
            text = text.strip()
            if text and answer_preserved(extract, normalise, ex["response"], text, ex["answer"]):
                added.append({**{key: ex[key] for key in KEEP_KEYS if key in ex}, "id": f"{ex['id']}-da{k + 1}",
                              "response": lead + text})
            elif not text or extract(text) is None:
                rejected_no_answer += 1
            else:
                rejected_other += 1
    generated = sum(len(t) for t in outputs)
    record = {"generated": generated, "kept": len(added), "rejected": generated - len(added),
              "rejected_no_answer": rejected_no_answer, "rejected_wrong_answer": rejected_other,
              "examples_before": len(examples), "examples_after": len(examples) + len(added)}
    return examples + added, record


def generator_config(name: str | None, cfg):
    """The ModelConfig of `method.da.generator`: a conf/model/<name>.yaml (its `defaults` merged first), or the
    run's own model for None."""
    if name is None:
        return cfg.model
    folder = Path(__file__).resolve().parents[1] / "conf" / "model"

    def raw(n: str) -> dict:
        path = folder / f"{n}.yaml"
        if not path.is_file():
            raise ConfigError(f"method.da.generator={n!r} is not a model config; choose one of "
                              f"{sorted(p.stem for p in folder.glob('*.yaml'))} (or null: the base model)")
        node = OmegaConf.to_container(OmegaConf.load(path))
        merged: dict = {}
        for parent in node.get("defaults", []):
            if isinstance(parent, str) and parent != "_self_":
                merged.update(raw(parent))
        return {**merged, **(node.get("model") or {})}

    return build_dataclass(ModelConfig, raw(name), "method.da.generator.")


def paraphrase(cfg, task, examples: list[dict], device) -> tuple[list[dict], dict]:
    """DA: generate `method.da.n` paraphrases per example with the generator, keep the answer-preserving ones;
    cached by content."""
    if not task.EXTRACTORS:  # e.g. task=sft: your data has no final answer to check a paraphrase against
        raise ConfigError(f"method=da keeps a paraphrase only when the task's answer extractor reads the same final "
                          f"answer from it, and task={cfg.task.name} has no extractor; choose another method")
    da = cfg.method.da
    gen_cfg = generator_config(da.generator, cfg)
    weights = models.resolve_weights(gen_cfg, cfg.paths.cache_dir)
    extract = next(iter(task.EXTRACTORS.values()))
    spec = {"v": AUGMENT_VERSION, "generator": model_identity(weights, cfg.paths.cache_dir),
            "generator_chat_template": gen_cfg.chat_template, "instruction": INSTRUCTION,
            "da": dataclasses.asdict(da), "seed": cfg.seed if da.temperature > 0 else None,
            "extractor": [task.__name__, task.EXTRACT_VERSION, next(iter(task.EXTRACTORS))],
            "examples": cache.key_of({"examples": examples})}

    def build(tmp: Path) -> None:
        tokenizer = models.load_tokenizer(weights)
        model = models.load_model(gen_cfg, weights, device)

        def generate(prompts, n):
            return generate_many(model, tokenizer, prompts, gen_cfg.chat_template, cfg.eval.batch_size,
                                 da.max_new_tokens, n=n, do_sample=da.temperature > 0,
                                 temperature=max(da.temperature, 1e-5), seed=cfg.seed, desc="paraphrasing")

        augmented, record = paraphrase_set(examples, generate, extract, normalise, da.n)
        (tmp / "examples.jsonl").write_text("".join(json.dumps(e) + "\n" for e in augmented))
        (tmp / "record.json").write_text(json.dumps(record))

    folder = cache.cached_dir(cfg.paths.cache_dir, "augment", spec, build)
    augmented = [json.loads(line) for line in (folder / "examples.jsonl").read_text().splitlines() if line]
    record = {**json.loads((folder / "record.json").read_text()), "generator": gen_cfg.name,
              "cache_key": folder.name, "version": AUGMENT_VERSION}
    log.info("DA: %d paraphrases generated, %d kept, %d rejected", record["generated"], record["kept"],
             record["rejected"])
    return augmented, record

