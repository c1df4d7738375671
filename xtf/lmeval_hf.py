"""lm-eval's HFLM around the model held in memory (xtf.lmeval, xtf.lmeval_named run their tasks on it).

    lm = make_lm(model, tokenizer, batch_size, batch_tokens)   # an lm-eval `LM`

Three additions to HFLM, each a mixin: a progress bar per batch (`_BatchProgress`), token-budget batches
(`_FastGeneration`) and a per-row stop (`_PrivateHFLMHooks`). The last is the ONLY place that overrides private
methods of HFLM (`_model_generate`, `_model_call`, lm-eval 0.4.13); tests/test_lmeval_hf.py fails when lm-eval
changes what they replace (signatures, the copied body) or stops calling them.
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteriaList

from xtf import distributed
from xtf.batching import token_budget_batches
from xtf.generation import StopOnStrings, generate_in_rounds

# lm-eval's two warnings on every in-memory model: both say that `pretrained` is a model object, which is how this
# harness uses HFLM on purpose (one process, no accelerate launch). Only these exact messages are dropped.
_KNOWN_HFLM_WARNINGS = ("`pretrained` model kwarg is not of type `str`",
                        "Passed an already-initialized model through `pretrained`")


class _DropKnownWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_KNOWN_HFLM_WARNINGS)


def make_lm(model, tokenizer, batch_size: int, batch_tokens: int = 0):
    """lm-eval's HFLM around the in-memory model (no reload, no copy; its dtype and device are kept), with a
    progress bar per batch (`_BatchProgress`), rows that stop on their own stop string (`_FastGeneration`,
    `_PrivateHFLMHooks`) and, with batch_tokens > 0, generation batches cut by a token budget instead of
    `batch_size` rows."""
    from lm_eval.models.huggingface import HFLM  # lm-eval takes seconds to import: only when a task runs on it

    class BatchProgressHFLM(_BatchProgress, _FastGeneration, _PrivateHFLMHooks, HFLM):
        pass

    # Generation pads on the left (HFLM.tok_batch_encode sets padding_side="left" per batch and restores it);
    # log-likelihood batches are right-padded by HFLM itself. BOS follows the tokenizer's default, as in
    # xtf.data.prompt_ids; a chat-rendered prompt that starts with BOS gets no second one.
    hf_log, drop = logging.getLogger("lm_eval.models.huggingface"), _DropKnownWarnings()
    hf_log.addFilter(drop)
    try:
        lm = BatchProgressHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    finally:
        hf_log.removeFilter(drop)
    lm.batch_tokens = batch_tokens
    return distributed.lm_eval_data_parallel(lm)  # a distributed run: lm-eval's own data-parallel mode


class _FastGeneration:
    """Two speed-ups of HFLM's generation that leave every greedy generation as it was (tests/test_eval_speed.py):

    - per-row stop (xtf.generation.StopOnStrings, `_PrivateHFLMHooks._model_generate`) in place of lm-eval's
      MultiTokenEOSCriteria, which ends a batch only when every row has met the same stop string: a batch whose
      rows end on "\\n\\n" and on "Question:" (or one row that never stops) generated max_gen_toks for all of them;
    - batch_tokens > 0: requests sorted by prompt length and cut into batches by a token budget
      (xtf.batching.token_budget_batches), each run by HFLM.generate_until as one batch: short prompts go many
      to a batch, long ones few, instead of a fixed row count sized for the longest."""

    batch_tokens = 0

    def generate_until(self, requests, disable_tqdm: bool = False):
        if self.batch_tokens <= 0 or not requests:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        from lm_eval.models.utils import normalize_gen_kwargs  # lm-eval: imported by make_lm already

        lengths = [len(self.tok_encode(r.args[0])) for r in requests]
        new_tokens = max(normalize_gen_kwargs(dict(r.args[1]), self.max_gen_toks)["max_gen_toks"] for r in requests)
        out: list = [None] * len(requests)
        rows = self.batch_size_per_gpu
        try:
            for idx in token_budget_batches(lengths, rows, self.batch_tokens, new_tokens):
                self.batch_size_per_gpu = len(idx)  # HFLM batches by row count: one batch of exactly these
                for i, text in zip(idx, super().generate_until([requests[i] for i in idx], disable_tqdm=True)):
                    out[i] = text
        finally:
            self.batch_size_per_gpu = rows
        return out


class _BatchProgress:
    """HFLM's own bars count requests but advance only after each batch, all at once: the first ETA is the first
    batch's time × every remaining request (e.g. "2:46:57" for a GSM8K run of ~10 min at batch 16). This bar
    advances by a whole batch when the batch is done (`_advance`, called from `_PrivateHFLMHooks`), so its ETA is
    batch time × remaining batches."""

    _bar = None

    def _with_bar(self, method, requests, desc: str):
        with tqdm(total=len(requests), desc=f"lm-eval {desc}", unit="req", smoothing=0.1) as self._bar:
            out = method(requests, disable_tqdm=True)
            self._bar.update(self._bar.total - self._bar.n)  # grouped requests: fewer rows than requests
        self._bar = None
        return out

    def _advance(self, rows: int) -> None:
        if self._bar is not None:
            self._bar.update(min(rows, self._bar.total - self._bar.n))

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self._with_bar(super().generate_until, requests, "generate")

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self._with_bar(super().loglikelihood, requests, "log-likelihood")


class _PrivateHFLMHooks:
    """Every override of a private HFLM method, in one place (lm-eval 0.4.13; tests/test_lmeval_hf.py pins the
    signatures and the body of HFLM._model_generate copied here, and checks that lm-eval calls both):

    - `_model_generate` (one generation batch, called by HFLM.generate_until): HFLM's own body with
      xtf.generation.StopOnStrings (a per-row stop) in place of lm-eval's stop_sequences_criteria, and greedy
      batches decoded by xtf.generation.generate_in_rounds (ended rows leave the batch; the same tokens);
    - `_model_call` (one log-likelihood batch): HFLM's, unchanged.
    Both advance the batch progress bar (`_BatchProgress._advance`) by the batch's rows when it is done."""

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
        generation_kwargs["temperature"] = generation_kwargs.get("temperature", 0.0)
        do_sample = generation_kwargs.get("do_sample")
        if (temp := generation_kwargs.get("temperature")) == 0.0 and do_sample is None:
            generation_kwargs["do_sample"] = do_sample = False
        if do_sample is False and temp == 0.0:
            generation_kwargs.pop("temperature", None)
        with torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                            enabled=self.mixed_precision_dtype is not None):
            if do_sample is False and generation_kwargs.get("num_beams", 1) == 1:  # greedy: in rounds (xtf.generation)
                kwargs = {k: v for k, v in generation_kwargs.items() if k not in ("do_sample", "attention_mask")}
                out = generate_in_rounds(
                    self.model, context, generation_kwargs["attention_mask"], max_length - context.shape[1],
                    self.tokenizer.pad_token_id, self.model.generation_config.eos_token_id,
                    lambda rows: StopOnStrings(self.tokenizer, stop, context.shape[1], rows), **kwargs)
            else:
                criteria = StoppingCriteriaList([StopOnStrings(self.tokenizer, stop, context.shape[1],
                                                               context.shape[0])])
                out = self.model.generate(input_ids=context, max_length=max_length, stopping_criteria=criteria,
                                          pad_token_id=self.tokenizer.pad_token_id, use_cache=True,
                                          **generation_kwargs)
        self._advance(context.shape[0])
        return out

    def _model_call(self, inps, *args, **kwargs):
        out = super()._model_call(inps, *args, **kwargs)
        self._advance(inps.shape[0])
        return out
