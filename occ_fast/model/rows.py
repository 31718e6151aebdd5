"""Rows and targets of every head for the same scored tokens, and their log-probs in one kernel call.

Alignment (docs/method.md section 2): the main head (head 0) predicts token ``s_j`` from trunk
row ``j-1``; MTP depth k predicts the same ``s_j`` from its row ``j-1-k``. A head has no row for
``s_j`` when ``j-1-k`` falls before the start of ``s_j``'s sequence; its target is then
``ignore_index`` (log-prob 0, mask 0). Every head gets the same ``N`` tokens in the same order,
so ``lp[0][n]`` and ``lp[k][n]`` are the main and depth-k log-probs of one token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from occ_fast.kernels import LinearLogprobOutput, heads_logprob, linear_logprob

from .wrapper import MTPForwardOutput


@dataclass
class HeadRows:
    """``hiddens[k]`` ``[N, H]`` and ``targets[k]`` ``[N]`` for heads ``k = 0..K`` (0 = main).
    ``token_index`` ``[N]``: flat index ``b * T + j`` of each scored token in the ``[B, T]`` batch."""

    hiddens: list[torch.Tensor]
    targets: list[torch.Tensor]
    token_index: torch.Tensor
    shape: tuple[int, int]
    ignore_index: int

    def valid(self, head: int) -> torch.Tensor:
        """``[N]`` bool: head ``head`` has a row for the token (the MTP term's mask)."""
        return self.targets[head] != self.ignore_index

    def to_dense(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Scatter per-token ``[N]`` values back to ``[B, T]``, ``fill`` elsewhere."""
        dense = values.new_full((self.shape[0] * self.shape[1],), fill)
        return dense.index_put((self.token_index,), values).view(self.shape)


def build_head_rows(
    out: MTPForwardOutput,
    input_ids: torch.Tensor,
    token_mask: torch.Tensor,
    *,
    ignore_index: int = -100,
) -> HeadRows:
    """Gather each head's row for every token where ``token_mask`` (``[B, T]``, e.g. the response
    mask) is set. One host sync (the token count)."""
    batch, length = input_ids.shape
    if token_mask.shape != input_ids.shape:
        raise ValueError(
            f"token_mask must match input_ids {tuple(input_ids.shape)}, got {tuple(token_mask.shape)}"
        )
    seg = out.layout.segment_ids.reshape(-1)
    token_index = (token_mask.bool().reshape(-1) & (seg >= 0)).nonzero().squeeze(1)
    position = token_index % length
    tokens = input_ids.reshape(-1)[token_index]
    hiddens, targets = [], []
    for k, rows in enumerate([out.hidden, *out.mtp_hidden]):
        row = token_index - 1 - k
        has_row = position >= 1 + k
        row = torch.where(has_row, row, 0)
        has_row = has_row & (seg[row] == seg[token_index])
        hiddens.append(rows.reshape(batch * length, -1)[row])
        targets.append(torch.where(has_row, tokens, ignore_index))
    return HeadRows(hiddens, targets, token_index, (batch, length), ignore_index)


def head_logprobs(
    out: MTPForwardOutput,
    rows: HeadRows,
    *,
    temperature: float | torch.Tensor = 1.0,
    return_entropy: bool = False,
    impl: str = "auto",
    compute_dtype: torch.dtype | None = None,
) -> list[LinearLogprobOutput]:
    """Per-token log-probs (and entropy) of every head: ``[N]`` each, head 0 = main.

    ``temperature``: a float or a per-token ``[N]`` tensor, the same for every head. All heads go
    through one fused call when they share ``weight``. With ``detach_lm_head`` the MTP rows need a
    detached weight, so they take a second call: ``W`` is read twice and the MTP rows add no ``dW``.

    ``compute_dtype`` (the autocast dtype): rows and weight go to the kernel in it. Under autocast an
    fp32 model's final norm hands out fp32 rows; fed as they are, the kernel would take its 3xTF32
    path. The cast weight is a ``[V, H]`` 16-bit copy held until backward, as autocast's own
    linear layers hold theirs; its gradient reaches the fp32 weight.
    """
    heads = len(rows.hiddens)
    hiddens = [h.to(compute_dtype or h.dtype) for h in rows.hiddens]
    weight = out.weight.to(compute_dtype or out.weight.dtype)
    mtp_weight = weight if out.mtp_weight is out.weight else out.mtp_weight.to(weight.dtype)

    def per_head(n: int) -> float | list[torch.Tensor]:
        return [temperature] * n if isinstance(temperature, torch.Tensor) else temperature

    kwargs = {"ignore_index": rows.ignore_index, "return_entropy": return_entropy, "impl": impl}
    if mtp_weight is weight:
        return heads_logprob(hiddens, weight, rows.targets, temperature=per_head(heads), **kwargs)
    main = linear_logprob(hiddens[0], weight, rows.targets[0], temperature=temperature, **kwargs)
    mtp = heads_logprob(hiddens[1:], mtp_weight, rows.targets[1:], temperature=per_head(heads - 1), **kwargs)
    return [main, *mtp]
