"""FSDP2 sharding of an :class:`~occ_fast.model.MTPModel`, and gradient clipping over its shards."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from occ_fast.model import MTPModel
from occ_fast.model.wrapper import decoder_of

logger = logging.getLogger(__name__)


def shard_model(
    model: MTPModel,
    *,
    mixed_precision: bool,
    reshard_after_forward: bool = True,
    activation_checkpointing: bool = False,
) -> MTPModel:
    """Apply FSDP2 (``fully_shard``) in place: one group per trunk decoder layer, one per MTP depth,
    one for an untied token embedding, then the root (``lm_head``, the final norm).

    The embedding's group is sharded outside its forward (one call feeds the trunk and the MTP
    inputs) and its backward. ``lm_head`` stays in the root group, which is never resharded after
    forward: the root's pre-forward hook all-gathers it, :meth:`MTPModel.forward` hands the full
    ``get_output_embeddings().weight`` out in its output, and the fused log-prob kernel that runs
    *after* the forward (and its backward) reads that full tensor; the root reshards and
    reduce-scatters its gradient when backward ends. Why not a group of its own (memory model):
    the kernel needs the whole ``[V, H]`` matrix in its forward and at the start of backward, which
    is where memory peaks (every activation saved, plus the kernel's fp32 ``dW`` and ``dlogits``
    chunk), so its own group would be all-gathered at the same two moments and leave that peak as
    it is; it could free only the matrix and its 16-bit gradient during the trunk's backward, when
    the freed activations already make room. The embedding, by contrast, sat unsharded through the
    peak: sharding it lowers the peak by ``V x H x 2`` bytes (1.09 GB for an untied Qwen2-7B,
    V = 152064, H = 3584) for a few extra all-gathers of its shard per micro-batch. A tied
    embedding is ``lm_head``: one parameter, in the root. ``reshard_after_forward`` applies to the
    layer groups only.

    Gradients are *summed* over ranks, not averaged (FSDP's default): each rank's loss is already
    divided by the global token count (:func:`global_sum`), so the sum is the single-process gradient.

    After a no-grad forward (old log-probs) the root stays unsharded until the next backward; call
    ``model.reshard()`` before an optimizer step that is not preceded by a training backward.

    ``mixed_precision``: bf16 parameters in forward/backward, fp32 gradient reduction and fp32
    master weights (keep the model in fp32 and autocast off). ``activation_checkpointing``:
    transformers' own checkpointing of the trunk decoder layers (non-reentrant); transformers
    checkpoints each layer's ``forward``, so FSDP2's hooks on the layer stay outside the recomputed
    region. MTP layers are not checkpointed.
    """
    if not dist.is_initialized():
        raise RuntimeError(
            "shard_model needs a process group: launch with torchrun and call init_distributed()"
        )
    device_type = next(model.parameters()).device.type
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_precision
        else MixedPrecisionPolicy()
    )
    if activation_checkpointing:
        model.base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = [*decoder_of(model.base).layers, *model.mtp]
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    embedding = model.base.get_input_embeddings()
    units = [embedding] if embedding.weight is not model.base.get_output_embeddings().weight else []
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=True, mp_policy=policy)
    fully_shard(model, mesh=mesh, reshard_after_forward=False, mp_policy=policy)
    for module in (*layers, *units, model):
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no pre-multiplied sum
    logger.info(
        "FSDP2 over %d ranks (%s): %d layer groups%s + root; %s; activation checkpointing %s",
        dist.get_world_size(),
        device_type,
        len(layers),
        " + the embedding" if units else "",
        "bf16 params / fp32 reduce" if mixed_precision else "fp32",
        "on" if model.base.is_gradient_checkpointing else "off",
    )
    return model


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over ``model``'s parameters, returning the global norm as a plain tensor
    (under FSDP2 it comes back as a replicated DTensor, which the loop's metrics cannot stack)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def weights_norm(model: torch.nn.Module) -> torch.Tensor:
    """The global norm of ``model``'s parameters, a plain tensor under FSDP2 too (as :func:`clip_grad_norm`)."""
    norm = torch.nn.utils.get_total_norm(model.parameters())
    return norm.full_tensor() if isinstance(norm, DTensor) else norm
