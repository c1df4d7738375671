"""Pure numeric core: the alignment convention, labels, the one shift, loss normalisation, mask statistics."""

import numpy as np
import pytest
import torch

from xtf.data import tokenize, tokenize_example
from xtf.masking import mask_stats
from xtf.methods.tokens import keep_all_answer_tokens
from xtf.train import IGNORE, Collator, make_labels, masked_loss, token_nll


class WordTokenizer:
    """A 5-token world: whitespace-split words, bos=0, eos=1, no chat template."""

    vocab = {"<bos>": 0, "<eos>": 1, "Q:": 2, "2+2?": 3, "4": 4, "is": 5, "four": 6}
    bos_token, eos_token, eos_token_id, pad_token_id, chat_template = "<bos>", "<eos>", 1, 1, None

    def __call__(self, text, add_special_tokens=True):
        ids = [self.vocab[w] for w in text.split()]
        return {"input_ids": ([0] if add_special_tokens else []) + ids}


def test_alignment_on_five_tokens():
    # prompt "Q: 2+2?" → [bos, Q:, 2+2?]; response "4" → [4, eos]   (the docstring example of xtf.data)
    ids, mask, n_answer = tokenize_example(WordTokenizer(), {"prompt": "Q: 2+2?", "response": "4"}, 100, False)
    assert ids == [0, 2, 3, 4, 1]
    assert mask == [False, False, False, True, True]
    assert n_answer == 2
    labels = make_labels(ids, np.array(mask))
    assert labels == [IGNORE, IGNORE, IGNORE, 4, 1]


def test_token_nll_is_aligned_to_input_ids():
    # logits[:, t] predict token t+1: make position 2 put all mass on token 4, so nll[3] ≈ 0.
    ids = torch.tensor([[0, 2, 3, 4, 1]])
    logits = torch.zeros(1, 5, 7)
    logits[0, 2, 4] = 50.0
    nll = token_nll(logits, ids)
    assert nll.shape == (1, 5)
    assert nll[0, 0] == 0                       # nothing predicts token 0
    assert nll[0, 3] < 1e-6                     # token 4 at t=3, predicted from logits[2]
    assert torch.allclose(nll[0, 1], torch.log(torch.tensor(7.0)))  # uniform elsewhere


def test_loss_normalisation_kept_vs_answer():
    nll = torch.tensor([[0.0, 9.0, 2.0, 4.0, 6.0]])
    labels = torch.tensor([[IGNORE, IGNORE, 2, IGNORE, 6]])       # 2 kept of 3 answer tokens
    response = torch.tensor([[0, 0, 1, 1, 1]])
    assert masked_loss(nll, labels, response, "kept").item() == pytest.approx((2 + 6) / 2)
    assert masked_loss(nll, labels, response, "answer").item() == pytest.approx((2 + 6) / 3)


def test_collator_pads_without_training_on_padding():
    batch = Collator(pad_id=9)([
        {"input_ids": [0, 2, 4], "labels": [IGNORE, IGNORE, 4], "response_mask": [0, 0, 1]},
        {"input_ids": [0, 4], "labels": [IGNORE, 4], "response_mask": [0, 1]},
    ])
    assert batch["input_ids"].tolist() == [[0, 2, 4], [0, 4, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 4], [IGNORE, 4, IGNORE]]


def test_truncation_policies_are_counted():
    tok = WordTokenizer()
    examples = [
        {"id": "a", "prompt": "Q: 2+2?", "response": "4 is four"},   # 3 prompt + 4 answer tokens = 7
        {"id": "b", "prompt": "Q: 2+2? Q: 2+2? Q:", "response": "4"},  # prompt alone 6 tokens
        {"id": "c", "prompt": "Q:", "response": "4"},               # 4 tokens
    ]
    rows, stats = tokenize(tok, examples, max_len=5, truncation="right", chat_template=False)
    assert [r["id"] for r in rows] == ["a", "c"]
    assert rows[0]["input_ids"] == [0, 2, 3, 4, 5] and rows[0]["response_mask"] == [False, False, False, True, True]
    assert stats["n_truncated"] == 1 and stats["answer_tokens_cut"] == 2 and stats["n_dropped_too_long"] == 1
    rows, stats = tokenize(tok, examples, max_len=5, truncation="drop", chat_template=False)
    assert [r["id"] for r in rows] == ["c"] and stats["n_dropped_too_long"] == 2 and stats["n_truncated"] == 0


def test_mask_stats_count_answer_tokens_only():
    rows = [{"id": "a", "response_mask": [False, False, True, True]}, {"id": "b", "response_mask": [False, True]}]
    keeps, noisy, _ = keep_all_answer_tokens(rows, None, None, 0)
    keeps[1][:] = False
    stats = mask_stats(rows, keeps, {"x": [np.array([0, 0, 0, 1], bool), np.array([0, 1], bool)]})
    assert stats["answer_tokens"] == 3 and stats["kept_tokens"] == 2
    assert stats["kept_fraction"] == pytest.approx(2 / 3)
    assert stats["empty_samples"] == 1
    assert stats["noisy_fraction_x"] == pytest.approx(2 / 3)
    with pytest.raises(AssertionError, match="non-answer token"):
        mask_stats(rows, [np.array([1, 0, 1, 1], bool), np.array([0, 1], bool)], {})
