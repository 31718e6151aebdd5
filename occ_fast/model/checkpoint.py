"""Load an :class:`MTPModel` from a local Hugging Face directory and save it back, MTP weights included.

The trunk loads through ``AutoModelForCausalLM`` (which skips MTP keys); the MTP weights are read
from the same safetensors files here, under the checkpoint's naming (:mod:`.naming`). MiMo-7B is a
Qwen2 architecture whose ``config.json`` says ``model_type: mimo`` (custom code that transformers
does not ship, and that never runs the MTP layers): it loads as Qwen2 with the extra keys.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, Qwen2Config

from occ_fast.tokenizer import TOKENIZER_FILES

from . import naming as names
from .backends import apply_liger, choose_attn_implementation
from .mtp import MTPLayer
from .wrapper import MTPModel, new_mtp_layer

logger = logging.getLogger(__name__)

MTPInit = Literal["auto", "checkpoint", "fresh"]


class MTPCheckpointError(ValueError):
    """A checkpoint's MTP weights are absent, missing a key, misshapen or unknown."""


class ModelDirError(ValueError):
    """A model path that cannot be used: not a local directory, or one without what a run reads."""


def check_model_dir(path: str | Path) -> None:
    """Raise :class:`ModelDirError`, naming ``path`` and everything it lacks, unless it is a local
    directory with config.json, a tokenizer and safetensors weights: cheap, so that a Hub id or a
    data directory is one line before anything heavy starts. Only safetensors are read: a pickled
    ``pytorch_model.bin`` could run code when loaded, so it is never opened."""
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(
            f"model directory {path} does not exist (models are read from a local directory, never "
            "downloaded: download it first, then pass that directory as --model.name-or-path)"
        )
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"tokenizer ({', '.join(TOKENIZER_FILES[:-1])} or {TOKENIZER_FILES[-1]})")
    if not any(path.glob("*.safetensors")) and not (path / "model.safetensors.index.json").is_file():
        pickles = ", ".join(sorted(p.name for p in path.glob("*.bin")))
        why = f" ({pickles}: pickled, never loaded, as unpickling can run code; convert to safetensors)"
        missing.append("*.safetensors weights" + (why if pickles else ""))
    if missing:
        raise ModelDirError(f"model directory {path} has no {', no '.join(missing)}")


def load_mtp_model(
    path: str | Path,
    *,
    num_mtp: int | None = None,
    mtp_init: MTPInit = "auto",
    naming: names.Naming | None = None,
    dtype: torch.dtype | str = "auto",
    device: torch.device | str | None = None,
    attn_implementation: str = "auto",
    use_liger: bool = False,
    detach_trunk: bool = False,
    detach_lm_head: bool = False,
) -> MTPModel:
    """Load trunk and MTP heads from ``path`` (no network).

    ``mtp_init``: ``checkpoint`` requires MTP weights; ``auto`` loads them when the checkpoint has
    any and starts fresh heads when it has none; ``fresh`` ignores them. Loading is strict: a
    missing, misshapen or unknown MTP key raises naming the key. ``num_mtp`` defaults to the
    checkpoint's depth count (else ``num_nextn_predict_layers``, else 1). ``naming`` is the
    convention used when saving; it defaults to the checkpoint's, or ``mimo`` for fresh heads.
    """
    if mtp_init not in ("auto", "checkpoint", "fresh"):
        raise ValueError(f"mtp_init must be auto, checkpoint or fresh, got {mtp_init!r}")
    path = Path(path)
    config = load_config(path)
    impl = choose_attn_implementation(attn_implementation)
    base = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype, attn_implementation=impl)
    if device is not None:
        base = base.to(device)
    if use_liger:
        apply_liger(base)
    layers_n = config.num_hidden_layers
    weight_files = _weight_files(path)
    found = names.detect(weight_files, layers_n)
    if mtp_init == "checkpoint" and found is None:
        raise MTPCheckpointError(
            f"{path}: no MTP weights found (looked for model.mtp_layers.* and model.layers.{layers_n}+.*); "
            "pass mtp_init='fresh' to start fresh MTP heads"
        )
    depths = num_mtp or (found[1] if found else getattr(config, "num_nextn_predict_layers", None) or 1)
    if mtp_init == "fresh" or found is None:
        if found is not None:
            logger.info("mtp_init='fresh': ignoring the checkpoint's %s-named MTP weights", found[0])
        model = MTPModel.from_base(base, depths, attn_implementation=impl, naming=naming or "mimo")
    else:
        ckpt_naming, ckpt_depths = found
        if depths < ckpt_depths:
            logger.info("loading %d of the checkpoint's %d MTP depths", depths, ckpt_depths)
        layers = [_load_layer(base, path, weight_files, ckpt_naming, depth) for depth in range(1, depths + 1)]
        logger.info("MTP init: checkpoint (%d depth(s), %s naming) from %s", depths, ckpt_naming, path)
        model = MTPModel(base, layers, naming=naming or ckpt_naming)
    model.detach_trunk, model.detach_lm_head = detach_trunk, detach_lm_head
    return model


def save_mtp_model(
    model: MTPModel, path: str | Path, *, tokenizer=None, naming: names.Naming | None = None
) -> None:
    """Write config, safetensors (trunk + MTP weights under ``naming``, default ``model.naming``) and
    the tokenizer if given. ``num_nextn_predict_layers`` is the depth count. MiMo naming on a Qwen2
    trunk keeps ``model_type: qwen2`` (what transformers' and vLLM's config registries know; MiMo's own
    ``mimo`` needs remote code) and sets ``architectures: [MiMoForCausalLM]``, from which vLLM builds
    its MiMo model and MiMo MTP drafter."""
    naming = naming or model.naming
    base, path = model.base, Path(path)
    layers_n = base.config.num_hidden_layers
    state = dict(base.state_dict())
    for depth, layer in enumerate(model.mtp, start=1):
        for key, tensor in layer.state_dict().items():
            state[names.checkpoint_key(naming, depth, layers_n, key)] = names.convert(naming, key, tensor)
        copies = dict(
            zip(names.SHARED_COPIES[naming], (base.get_input_embeddings(), base.get_output_embeddings()))
        )
        for suffix, module in copies.items():
            state[names.prefix(naming, depth, layers_n) + suffix] = module.weight.detach().clone()
    base.save_pretrained(path, state_dict=state)
    config_file = path / "config.json"
    raw = json.loads(config_file.read_text())
    raw["num_nextn_predict_layers"] = model.num_mtp
    if naming == "mimo" and raw.get("model_type") == "qwen2":
        raw["architectures"] = ["MiMoForCausalLM"]
    config_file.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    logger.info("saved %d MTP depth(s) with %s naming to %s", model.num_mtp, naming, path)


def load_config(path: str | Path) -> PretrainedConfig:
    """The model config; MiMo's own ``model_type: mimo`` (XiaomiMiMo checkpoints) is read as Qwen2."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face model directory)")
    raw = json.loads(config_file.read_text())
    if raw.get("model_type") == "mimo":
        raw.pop("auto_map", None)
        return Qwen2Config.from_dict(raw)
    return AutoConfig.from_pretrained(path)


def _weight_files(path: Path) -> dict[str, Path]:
    """Checkpoint key -> the safetensors file holding it."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {key: path / name for key, name in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights")
    keys = {}
    for file in files:
        with safe_open(file, "pt") as f:
            keys.update(dict.fromkeys(f.keys(), file))
    return keys


def _load_layer(
    base, path: Path, weight_files: dict[str, Path], naming: names.Naming, depth: int
) -> MTPLayer:
    """One MTP depth from the checkpoint, strictly: every parameter present with its exact shape."""
    layer = new_mtp_layer(base)
    layers_n = base.config.num_hidden_layers
    expected = layer.state_dict()
    wanted = {names.checkpoint_key(naming, depth, layers_n, key): key for key in expected}
    ckpt_prefix = names.prefix(naming, depth, layers_n)
    ignored = {ckpt_prefix + suffix for suffix in names.SHARED_COPIES[naming]}
    for key in weight_files:
        if key.startswith(ckpt_prefix) and key not in wanted and key not in ignored:
            raise MTPCheckpointError(
                f"{path}: unexpected MTP weight '{key}' for a {type(layer.layer).__name__} MTP layer"
            )
    for ckpt_key in wanted:
        if ckpt_key not in weight_files:
            raise MTPCheckpointError(
                f"{path}: MTP weight '{ckpt_key}' (depth {depth}, {naming} naming) is missing from the "
                "checkpoint; pass mtp_init='fresh' to start fresh MTP heads instead"
            )
    state = {}
    for file in {weight_files[ckpt_key] for ckpt_key in wanted}:
        with safe_open(file, "pt") as f:
            for ckpt_key in (k for k in wanted if weight_files[k] == file):
                key, shape = wanted[ckpt_key], tuple(f.get_slice(ckpt_key).get_shape())
                if shape != tuple(expected[key].shape):
                    raise MTPCheckpointError(
                        f"{path}: MTP weight '{ckpt_key}' has shape {shape}, expected "
                        f"{tuple(expected[key].shape)}; pass mtp_init='fresh' to start fresh MTP heads instead"
                    )
                state[key] = names.convert(naming, key, f.get_tensor(ckpt_key))
    layer.load_state_dict(state)
    return layer
