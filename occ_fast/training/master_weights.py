"""fp32 master weights for a single process whose model computes in bf16 (or fp16).

Why: a 16-bit AdamW rounds small updates away. At lr 1e-6 an update is far below half a bf16 ulp of
most weights (ulp/2 is 2^-9 of the weight, ~4e-4 of a 0.1 weight), so in 10 steps 0.6% of a tiny
model's weights moved, by a mean 135x smaller than in fp32: the run does not learn. FSDP2 keeps fp32
masters (its mixed-precision policy); a single process does the same here.

The model keeps its 16-bit parameters: the compute copy that the forward, the backward, the rollout
engine and the vLLM weight sync read (their dtype and memory are unchanged). Each trainable
parameter has an fp32 master that AdamW steps, with fp32 state; backward's 16-bit gradient is added
to the master's fp32 ``grad`` as soon as it is produced and then freed (micro-batches accumulate in
fp32, as FSDP2's fp32 reduction does); after every step the compute copy is the master rounded to
nearest, so an element moves once its accumulated change passes half a bf16 ulp. Memory per
trainable parameter: 2 (compute) + 4 (master) + 4 (grad) + 8 (AdamW) = 18 bytes, against 8 in
pure bf16.

Checkpoints, gradient clipping and weight norms read the masters: inside :func:`fp32_weights` the
model holds them in place of its 16-bit parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

HALF_PRECISION = (torch.bfloat16, torch.float16)


def needs_masters(params: list[nn.Parameter]) -> bool:
    """Plain (unsharded) 16-bit trainable parameters: FSDP2's are fp32 DTensors, its own masters."""
    return any(p.dtype in HALF_PRECISION and type(p) is nn.Parameter for p in params)


class MasterWeights:
    """The fp32 masters of ``model``'s trainable parameters (a tied parameter has one)."""

    def __init__(self, model: nn.Module):
        self._slots: list[tuple[nn.Module, str, nn.Parameter]] = []
        self._masters: dict[int, nn.Parameter] = {}
        self._hooks = []
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                if not param.requires_grad:
                    continue
                if id(param) not in self._masters:
                    master = nn.Parameter(param.detach().to(torch.float32, copy=True))
                    self._masters[id(param)] = master
                    self._hooks.append(param.register_post_accumulate_grad_hook(_accumulate_into(master)))
                self._slots.append((module, name, param))

    def master(self, param: nn.Parameter) -> nn.Parameter:
        return self._masters[id(param)]

    def release(self) -> None:
        """Stop catching the model's gradients (the warm start hands the model to the RL optimizer,
        whose masters then catch them); the compute copies keep the masters' last rounding."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    @torch.no_grad()
    def publish(self) -> None:
        """Round every master into its compute copy."""
        for _, _, param in self._slots:
            param.copy_(self._masters[id(param)])

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the masters while inside; on leaving, the compute copies come back,
        rounded from the masters (a checkpoint may have been loaded into them)."""
        for module, name, param in self._slots:
            module._parameters[name] = self._masters[id(param)]
        try:
            yield
        finally:
            for module, name, param in self._slots:
                module._parameters[name] = param
            self.publish()


def _accumulate_into(master: nn.Parameter):
    def accumulate(param: torch.Tensor) -> None:
        if master.grad is None:
            master.grad = param.grad.to(torch.float32)
        else:
            master.grad.add_(param.grad)
        param.grad = None

    return accumulate


class MasterAdamW(torch.optim.AdamW):
    """AdamW over fp32 masters (``param_groups`` hold them); each step refreshes the compute copy."""

    def __init__(self, masters: MasterWeights, params, **kwargs):
        super().__init__(params, **kwargs)
        self.masters = masters

    def step(self, closure=None):
        loss = super().step(closure)
        self.masters.publish()
        return loss


def adamw(model: nn.Module, groups: list[dict], **kwargs) -> torch.optim.AdamW:
    """AdamW over ``groups`` of ``model``'s trainable parameters; a :class:`MasterAdamW` over their
    fp32 masters in their place when they are plain 16-bit parameters (:func:`needs_masters`)."""
    if not needs_masters([p for group in groups for p in group["params"]]):
        return torch.optim.AdamW(groups, **kwargs)
    masters = MasterWeights(model)
    groups = [group | {"params": [masters.master(p) for p in group["params"]]} for group in groups]
    return MasterAdamW(masters, groups, **kwargs)


@contextmanager
def fp32_weights(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Inside, the model holds ``optimizer``'s fp32 master weights (saving or loading a checkpoint,
    clipping gradients, weight norms); a no-op for an optimizer without masters."""
    if not isinstance(optimizer, MasterAdamW):
        yield
        return
    with optimizer.masters.swapped_in():
        yield
