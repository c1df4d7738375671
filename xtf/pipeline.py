"""One run, top to bottom: load → tokenize → score → mask → fine-tune → evaluate → explain → record → export.

    python run.py model=tiny task=synth method=normal       (run.py validates the config and calls run())
    torchrun --nproc_per_node=2 run.py dist=ddp ...        (every rank runs this function; xtf/distributed.py:
                                                            shared scoring, training and generation; rank 0 writes)
    python run.py method=xtf score_only=true export.enabled=true   (score → mask → record → export: no training,
                                                            no evaluation; every row's decision in decisions.npz)
"""

from __future__ import annotations

import dataclasses
import logging
import shutil

import numpy as np
import torch

from xtf import (
    augment,
    data,
    decisions,
    disk,
    distributed,
    explain,
    export,
    finite,
    malloc,
    masking,
    method_scores,
    methods,
    models,
    online,
    results,
    run_lock,
    sandbox,
    scoring,
    tasks,
    threads,
)
from xtf.config import RunConfig
from xtf.evaluate import EVAL_VERSION, check_examples, evaluate
from xtf.masking import MASK_VERSION
from xtf.summary import most_masked, print_summary
from xtf.tasks import task_options
from xtf.train import TRAIN_VERSION, finetune
from xtf.validate import check_model_fit

log = logging.getLogger(__name__)


def code_versions(task) -> dict:
    """The versions of every stage's rules, recorded in each run (bumped when a stage's behaviour changes)."""
    return {"tokenize": data.TOKENIZE_VERSION, "mask": MASK_VERSION, "train": TRAIN_VERSION,
            "eval": EVAL_VERSION, "extract": task.EXTRACT_VERSION, "scorers": dict(scoring.SCORER_VERSIONS),
            "online": online.ONLINE_VERSION, "augment": augment.AUGMENT_VERSION}


def changed_versions(recorded: dict, current: dict, prefix: str = "") -> list[str]:
    """'stage vOLD → vNEW' for every version that differs between a record and this code (nested: scorers)."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key), current.get(key)
        if isinstance(old, dict) or isinstance(new, dict):
            out += changed_versions(old or {}, new or {}, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key} v{old} → v{new}")
    return out


def run(cfg: RunConfig) -> dict:
    """Run one experiment cell and return its record (the content of results.json)."""
    results.check_writable(cfg)  # first: a read-only results folder fails now, not after training
    distributed.start(cfg.dist, cfg.device, cfg.train)  # one process: nothing; torchrun / SLURM tasks: join
    try:
        with run_lock.held(cfg):  # one launch of a run at a time: a second one stops here, naming the holder's pid
            record = _run(cfg)
    except BaseException:
        distributed.finish(clean=False)  # no barrier: the other ranks may have failed too (torchrun ends them)
        raise
    distributed.finish()
    return record


def _run(cfg: RunConfig) -> dict:
    timer = results.Timer()
    task = tasks.TASKS[cfg.task.name]
    if cfg.eval.enabled and cfg.eval.benchmark and getattr(task, "EVALUATION", None) == "pass_at_k":
        # Before hours of training: model-written code runs only in the sandbox (or with the loud opt-in).
        sandbox.check(cfg.eval.UNSAFE_allow_unsandboxed_code)
    with timer("load_data"):  # bad rows, an empty split, a missing data folder or an unreachable Hub fail here
        used = data.select(cfg)
        train_examples, eval_examples = used.train, used.eval
        check_examples(cfg, eval_examples)  # eval.benchmark=false: every test row needs its reference answer
    with timer("resolve_model"), distributed.main_first():  # missing real weights fail here, within seconds
        weights = models.resolve_weights(cfg.model, cfg.paths.cache_dir)
    check_model_fit(cfg, weights)  # e.g. method.ri.layers against the model's layer count, before any scoring
    # The run id holds the weights and the rows used by content (results.content_identity, computed from the two
    # loads above): other weights or another data folder make another run, never "already complete".
    folder = results.run_dir(cfg)
    main = distributed.is_main()  # rank 0 (or the only process): the one that writes and prints
    existing = _complete_record(cfg, folder, task, main)
    if existing is not None:
        if main:
            _export(cfg, folder)  # export.enabled on a finished run: exported from its folder, nothing rerun
        return existing
    disk.check_free_space(cfg, weights, len(train_examples))  # a disk the run would fill fails now, naming it
    device = distributed.device(cfg.device)  # cuda:LOCAL_RANK on a multi-GPU run
    with results.wandb_mirror(cfg, folder.name) as wandb_run:
        tokenizer = models.load_tokenizer(weights)
        # Cached artifacts every rank needs are built by rank 0, then read by the others (main_first).
        with timer("augment"), distributed.main_first():  # DA adds training examples here; others: unchanged, None
            train_examples, augmentation = _augment(cfg, task, train_examples, device)
        with timer("tokenize"), distributed.main_first():
            rows, token_stats = data.tokenize_cached(
                tokenizer, train_examples, cfg.data.max_len, cfg.data.truncation, cfg.model.chat_template,
                cfg.paths.cache_dir, split="train", locations=used.task_data.locations,
                protect=getattr(task, "protected_spans", None))  # the answer format (xtf.tasks.common)
        with timer("load_model"):
            torch.manual_seed(cfg.seed)
            model = models.load_model(cfg.model, weights, device)
        # From the cache when any earlier run scored the same tokens with the same model; else each rank scores its
        # share of the rows and rank 0 writes the merged scores (xtf.scoring.cached_scores).
        with timer("score"), distributed.collective():
            scores, scoring_info = method_scores.compute_scores(
                methods.scores_needed(cfg.method), cfg, model, tokenizer, rows, weights, token_stats["cache_key"],
                tasks.expert_words(task, task_options(cfg)), results.outputs_dir(cfg))
        with timer("mask"):
            keeps, noisy, mask_stats = masking.mask(rows, scores, cfg.method, cfg.seed,
                                                    masking.structural_ids(tokenizer))
            detection = masking.detection(rows, keeps, noisy, scores, cfg.method)  # annotated noise only, else None
            mask_stats["most_masked"] = most_masked(rows, keeps, tokenizer)
        # score_only: no fine-tuning and no evaluation; the decisions below are the result.
        model, train_info, selector, trainable = _finetune(
            cfg, timer, model, tokenizer, rows, keeps, scores, scoring_info, mask_stats, token_stats, device, wandb_run)
        selection, detection = _online_selection(cfg, selector, rows, trainable, noisy, scores, detection, mask_stats)
        with timer("evaluate"), distributed.collective():
            metrics, predictions, protocol = _evaluate(cfg, model, tokenizer, task, eval_examples, main)
        record = _record(cfg, folder, task, used, weights, device, timer, metrics=metrics, mask=mask_stats,
                         scoring=scoring_info, detection=detection, tokenization=token_stats, training=train_info,
                         augmentation=augmentation, eval_protocol=protocol)
        if not main:  # rank 0 alone writes the run's files, W&B included
            return record
        if not cfg.score_only:
            results.write_predictions(folder, predictions)
        with timer("explain"):
            decisions.write(folder, train_examples, rows, keeps, noisy, scores)  # every row's decision (xtf.export)
            explain.write_inputs(folder, rows, tokenizer, keeps, noisy, scores, mask_stats,
                                 {"method": cfg.method.name, "run_id": folder.name, "task": cfg.task.name,
                                  "model": cfg.model.name}, detection, selection=selection)
            explain.write_report(folder)
        results.write_record(folder, record)  # last: its presence marks the run complete
        results.mirror_record(wandb_run, record)
    if not cfg.train.keep_checkpoints:
        for sub in ("checkpoints", "reference/checkpoints"):
            shutil.rmtree(results.outputs_dir(cfg) / sub, ignore_errors=True)
    print_summary(record, folder)
    _export(cfg, folder)  # after the record: an export can always be made again from the run folder
    return record


def _augment(cfg: RunConfig, task, examples: list[dict], device) -> tuple[list[dict], dict | None]:
    """The training examples after the method's augmentation (its registry entry's `augment`, as DA's paraphrases)
    and the record's `augmentation` section; unchanged and None for a method without one."""
    ref = methods.get(cfg.method.name).augment  # a path (xtf.augment's paraphrase for DA), imported here
    return methods.resolve(ref)(cfg, task, examples, device) if ref else (examples, None)


def _evaluate(cfg: RunConfig, model, tokenizer, task, eval_examples, main: bool) -> tuple[dict, list, dict]:
    """(metrics, predictions, protocol). Every rank evaluates in lockstep; greedy generation and answer NLL are
    shared out; only rank 0's metrics are recorded (each rank has its own work folder: lm-eval writes its task files
    there). Nothing under eval.enabled=false or score_only."""
    if not cfg.eval.enabled or cfg.score_only:
        return {}, [], {"name": "disabled"}
    return evaluate(model, tokenizer, task, eval_examples, cfg,
                    results.outputs_dir(cfg) / ("eval" if main else f"eval-rank{distributed.runtime().rank}"))


def _record(cfg: RunConfig, folder, task, used, weights: str, device, timer, **stages) -> dict:
    """results.json's content: the stages' outputs (metrics, mask, scoring, detection, tokenization, training,
    augmentation, eval_protocol) with what identifies the run and where it came from. A NaN or infinite metric or
    training loss fails here, naming it: such a run is never recorded complete (xtf.finite)."""
    finite.check_record(stages.get("metrics"), stages.get("training"))
    return {
        "status": "complete",
        "schema": results.RESULTS_SCHEMA,
        "run_id": folder.name,
        "experiment": cfg.experiment,
        "model": cfg.model.name, "task": cfg.task.name, "method": cfg.method.name, "train": cfg.train.name,
        "seed": cfg.seed,
        "mode": "score_only" if cfg.score_only else "finetune" if cfg.method.finetune else "base_model",
        **stages,
        "data": data.record_section(used, cfg.eval.split),
        "versions": code_versions(task),
        "weights": weights,
        **results.record_identity(task, weights, cfg.paths.cache_dir),  # the weights' sha256, each stage's code hash
        "config": dataclasses.asdict(cfg),
        "provenance": results.provenance(str(device)),
        "threads": threads.describe(),  # torch's CPU threads and why (xtf.threads: the cores other jobs left free)
        "malloc": malloc.describe(),  # glibc's mmap threshold and why (xtf.malloc)
        "timings": timer.seconds,  # the same dict: stages timed after this (explain) are in the written record
        "peak_rss_mib": timer.peak_rss_mib,  # the process's peak RSS at the end of each stage (the same dict, too)
    }


def _complete_record(cfg: RunConfig, folder, task, main: bool) -> dict | None:
    """The run's complete record when it needs no rerun (its own, or the same run's from another experiment,
    copied here), with what it says printed on rank 0; None when the run must run (or force=true)."""
    with distributed.main_first():  # rank 0 may copy the same run from another experiment; the others then read it
        existing = results.load_record(folder)
        if existing is None and not cfg.force and main:
            existing = results.adopt_record(folder)
    if not existing or cfg.force:
        return None
    if main:
        if existing.get("copied_from"):
            print(f"[xtf] the same run is complete in {cfg.paths.results_dir}/{existing['copied_from']}: copied, "
                  f"not rerun (force=true reruns): {folder}")
        else:
            print(f"[xtf] already complete, skipping (force=true reruns): {folder}")
        changed = changed_versions(existing.get("versions") or {}, code_versions(task))
        if changed:  # the run id is the config and the data/weights by content, not the code's version
            print(f"[xtf] WARNING: this record was computed by other code: {'; '.join(changed)}. "
                  "Its numbers may differ from what this code computes: force=true reruns it.")
        print_summary(existing, folder)
    return existing


def _finetune(cfg: RunConfig, timer, model, tokenizer, rows, keeps, scores, scoring_info, mask_stats, token_stats,
              device, wandb_run):
    """(model, training record, online selector or None, indices of the rows trained on). Nothing is trained under
    score_only or for a method that evaluates the base model (method.finetune=false)."""
    if cfg.score_only or not cfg.method.finetune:
        return model, None, None, []
    if methods.get(cfg.method.name).trains_own_model(cfg.method):
        # The method's scorer trained the result itself (its registry entry says so: TC's self-evolving chain,
        # method.evolve=chain): that model is evaluated; the masks are the selection it was trained on.
        if not scoring_info.get("trained_model"):
            raise RuntimeError(f"method={cfg.method.name} trains its own model, but its scores came without one "
                               f"(xtf.method_scores: 'trained_model'); rerun with force=true")
        with timer("load_model"):
            model = models.load_model(cfg.model, scoring_info["trained_model"], device)
        return model, {"trained_by": "method", "model": scoring_info["trained_model"]}, None, []
    # Samples with no kept token carry no loss: drop them (and count them) rather than feed empty batches.
    trainable = [i for i, k in enumerate(keeps) if k.any()]
    mask_stats["dropped_empty_samples"] = len(rows) - len(trainable)
    if not trainable:
        raise RuntimeError(
            f"every training sample is fully masked; nothing to fine-tune on (tokenisation: "
            f"{token_stats.get('n_truncated', '?')} of {len(rows)} examples cut at data.max_len="
            f"{cfg.data.max_len}: if the answers were cut away, raise data.max_len)")
    with timer("finetune"):
        # An online method (xtf.online) selects each batch's tokens during training; None otherwise.
        selector = online.selector(cfg.method, {k: [v[i] for i in trainable] for k, v in scores.items()})
        model, train_info = finetune(
            model, tokenizer, [rows[i] for i in trainable], [keeps[i] for i in trainable], cfg.train,
            cfg.model, cfg.method.epochs_factor, cfg.seed, results.outputs_dir(cfg), wandb_run, selector)
    model = distributed.gathered_model(model, device)  # FSDP: every weight back on each rank, to evaluate
    return model, train_info, selector, trainable


def _online_selection(cfg: RunConfig, selector, rows, trainable, noisy, scores, detection, mask_stats):
    """(an online method's per-token selection shares or None, the detection report). An online method's offline
    mask keeps every answer token; what it trained on is its selection. Against annotated noise its mask is the
    tokens selected in at least half of their training steps (DFT: a mean loss weight of at least 0.5), so its F1
    says what it filtered, not "nothing"."""
    selection = online.selection_shares(selector, rows, trainable)
    if selection is not None and detection is not None:
        selected = [np.nan_to_num(s, nan=0.0) >= 0.5 for s in selection["share"]]
        detection = masking.detection(rows, selected, noisy, scores, cfg.method)
        mask_stats["detection_mask"] = "online: selected in >= 0.5 of its training steps"
    return selection, detection


def _export(cfg: RunConfig, folder) -> None:
    """With export.enabled: the run's decision as a dataset (xtf.export), in export.dir or <run folder>/export."""
    if not cfg.export.enabled:
        return
    out = export.export_run(folder, cfg.export.dir)
    print(f"[xtf] exported the filtered dataset: {out} (datasets.load_from_disk({out / export.DATASET_DIR}), "
          f"{export.PARQUET_FILE}, README.md: its dataset card)")
