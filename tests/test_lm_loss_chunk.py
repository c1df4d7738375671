"""xtf.lm_loss's chunks are bounded in logits, not rows: a large vocabulary gets fewer positions per chunk, so the
loss adds at most LOGITS_BUDGET logits (and as many gradients) to the training's peak memory."""

import torch

from xtf import lm_loss


def _logit_shapes(monkeypatch) -> list:
    shapes = []
    real = lm_loss._logits

    def spy(hidden, weight, softcap):
        out = real(hidden, weight, softcap)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(lm_loss, "_logits", spy)
    return shapes


def test_a_chunk_holds_at_most_the_logits_budget(monkeypatch):
    monkeypatch.setattr(lm_loss, "LOGITS_BUDGET", 10 * 1000)
    shapes = _logit_shapes(monkeypatch)
    torch.manual_seed(0)
    hidden = torch.randn(64, 8, requires_grad=True)
    weight = torch.randn(1000, 8)
    targets = torch.randint(0, 1000, (64,))
    loss = lm_loss.linear_cross_entropy(hidden, weight, targets, torch.ones(64))
    lm_loss.chunked_nll(hidden.detach(), weight, targets)
    assert shapes and all(rows * vocab <= 10 * 1000 for rows, vocab in shapes)
    # the same loss as one chunk of every row
    reference = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    torch.testing.assert_close(loss, reference)


def test_chunk_rows_keeps_the_row_cap_and_at_least_one_row():
    assert lm_loss.chunk_rows(10) == lm_loss.CHUNK_ROWS
    assert lm_loss.chunk_rows(49152) == lm_loss.LOGITS_BUDGET // 49152
    assert lm_loss.chunk_rows(10 ** 9) == 1
