"""Loading and saving MTP checkpoints: MiMo and DeepSeek naming, fresh heads, strict errors."""

import json
import logging

import pytest
import torch
from model_helpers import make_sequences, packed_batch, tiny_base, tiny_mtp_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

from occ_fast.model import MTPCheckpointError, load_mtp_model, save_mtp_model


def _outputs(model) -> list[torch.Tensor]:
    ids, attn, pos, _, _ = packed_batch(make_sequences())
    with torch.no_grad():
        out = model(ids, attention_mask=attn, position_ids=pos)
    return [out.hidden, *out.mtp_hidden, out.weight]


def _assert_same_outputs(a, b):
    for x, y in zip(_outputs(a), _outputs(b), strict=True):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


def _write_by_hand(model, path, mtp_keys: dict[str, torch.Tensor], model_type: str | None = None):
    """A checkpoint written without occ_fast: HF's trunk plus the given MTP tensors."""
    state = dict(model.base.state_dict())
    state.update(mtp_keys)
    model.base.save_pretrained(path, state_dict=state)
    if model_type is not None:
        config = json.loads((path / "config.json").read_text())
        config.update(model_type=model_type, architectures=["MiMoForCausalLM"], num_nextn_predict_layers=1)
        (path / "config.json").write_text(json.dumps(config))


def test_loads_a_mimo_checkpoint_hidden_first(tmp_path):
    model = tiny_mtp_model("qwen2", num_mtp=1)
    keys = {}
    for name, t in model.mtp[0].state_dict().items():
        keys["model.mtp_layers.0." + name.removeprefix("layer.")] = t
    assert (
        "model.mtp_layers.0.self_attn.q_proj.bias" in keys and "model.mtp_layers.0.input_proj.weight" in keys
    )
    _write_by_hand(model, tmp_path, keys, model_type="mimo")
    loaded = load_mtp_model(tmp_path, mtp_init="checkpoint")
    assert loaded.naming == "mimo" and loaded.num_mtp == 1
    _assert_same_outputs(model, loaded)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_loads_a_deepseek_checkpoint_embedding_first(tmp_path, arch):
    model = tiny_mtp_model(arch, num_mtp=1, naming="deepseek")  # the format fixes the MTP input state
    state, hidden = model.mtp[0].state_dict(), model.base.config.hidden_size
    p = state["input_proj.weight"]
    ours = {"hidden_layernorm": "hnorm", "token_layernorm": "enorm", "final_layernorm": "shared_head.norm"}
    keys = {
        f"model.layers.2.{ours[n.split('.')[0]]}.weight": t
        for n, t in state.items()
        if n.split(".")[0] in ours
    }
    keys["model.layers.2.eh_proj.weight"] = torch.cat([p[:, hidden:], p[:, :hidden]], dim=1)  # [P_e | P_h]
    keys.update(
        {"model.layers.2." + n.removeprefix("layer."): t for n, t in state.items() if n.startswith("layer.")}
    )
    keys["model.layers.2.embed_tokens.weight"] = model.base.model.embed_tokens.weight.detach().clone()
    keys["model.layers.2.shared_head.head.weight"] = model.base.lm_head.weight.detach().clone()
    _write_by_hand(model, tmp_path, keys)
    loaded = load_mtp_model(tmp_path)
    assert loaded.naming == "deepseek"
    _assert_same_outputs(model, loaded)


@pytest.mark.parametrize(("naming", "num_mtp"), [("mimo", 2), ("deepseek", 2), ("mimo", 1)])
def test_save_then_load_round_trip(tmp_path, naming, num_mtp):
    model = tiny_mtp_model("qwen2", num_mtp=num_mtp, naming=naming)
    save_mtp_model(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_nextn_predict_layers"] == num_mtp
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    # transformers and vLLM know qwen2; the architecture is what makes vLLM pick its MiMo MTP drafter.
    assert config["model_type"] == "qwen2"
    if naming == "mimo":
        assert config["architectures"] == ["MiMoForCausalLM"]
        assert f"model.mtp_layers.{num_mtp - 1}.input_proj.weight" in keys
    else:
        assert {"model.layers.3.eh_proj.weight", "model.layers.3.shared_head.norm.weight"} <= keys
    loaded = load_mtp_model(tmp_path)
    assert (loaded.naming, loaded.num_mtp) == (naming, num_mtp)
    _assert_same_outputs(model, loaded)


def test_a_mimo_export_opens_with_transformers_auto_classes(tmp_path):
    model = tiny_mtp_model("qwen2", num_mtp=2, naming="mimo")
    save_mtp_model(model, tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.num_nextn_predict_layers == 2 and config.architectures == ["MiMoForCausalLM"]
    trunk = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[3, 1, 4, 1, 5, 9]])
    with torch.no_grad():
        torch.testing.assert_close(trunk(ids).logits, model.base(ids).logits)


def test_fresh_heads_for_a_checkpoint_without_mtp_and_their_round_trip(tmp_path, caplog):
    base = tiny_base("llama")
    base.save_pretrained(tmp_path / "plain")
    with caplog.at_level(logging.INFO, logger="occ_fast.model"):
        fresh = load_mtp_model(tmp_path / "plain", num_mtp=2)
    assert "MTP init: fresh" in caplog.text
    last = dict(fresh.base.model.layers[-1].state_dict())
    for layer in fresh.mtp:
        hidden = layer.input_proj.out_features
        want = torch.cat([torch.eye(hidden), torch.zeros(hidden, hidden)], dim=1)
        torch.testing.assert_close(layer.input_proj.weight, want, atol=0, rtol=0)
        for name, t in layer.layer.state_dict().items():
            torch.testing.assert_close(t, last[name], atol=0, rtol=0)
        assert all((n.weight == 1).all() for n in (layer.hidden_layernorm, layer.token_layernorm))
    save_mtp_model(fresh, tmp_path / "saved")
    reloaded = load_mtp_model(tmp_path / "saved", mtp_init="checkpoint")
    assert reloaded.num_mtp == 2
    _assert_same_outputs(fresh, reloaded)


def test_tokenizer_is_saved_alongside(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["one two three four"] * 4, trainers.BpeTrainer(special_tokens=["<unk>"]))
    save_mtp_model(tiny_mtp_model(), tmp_path, tokenizer=PreTrainedTokenizerFast(tokenizer_object=tok))
    assert (tmp_path / "tokenizer.json").is_file()


@pytest.fixture
def mimo_checkpoint(tmp_path):
    save_mtp_model(tiny_mtp_model("qwen2", num_mtp=1, naming="mimo"), tmp_path)
    return tmp_path


def _edit(path, edit):
    state = load_file(path / "model.safetensors")
    edit(state)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_mtp_weight_names_the_key(mimo_checkpoint):
    _edit(mimo_checkpoint, lambda s: s.pop("model.mtp_layers.0.mlp.up_proj.weight"))
    with pytest.raises(MTPCheckpointError, match=r"'model\.mtp_layers\.0\.mlp\.up_proj\.weight'.*missing"):
        load_mtp_model(mimo_checkpoint)
    fresh = load_mtp_model(mimo_checkpoint, mtp_init="fresh")
    assert (fresh.mtp[0].final_layernorm.weight == 1).all()


def test_misshapen_mtp_weight_names_the_key_and_shapes(mimo_checkpoint):
    def shrink(state):
        state["model.mtp_layers.0.input_proj.weight"] = torch.zeros(32, 32)

    _edit(mimo_checkpoint, shrink)
    with pytest.raises(
        MTPCheckpointError, match=r"'model\.mtp_layers\.0\.input_proj\.weight' has shape \(32, 32\)"
    ):
        load_mtp_model(mimo_checkpoint)


def test_more_depths_than_the_checkpoint_has_names_the_first_missing_key(mimo_checkpoint):
    with pytest.raises(MTPCheckpointError, match=r"model\.mtp_layers\.1\..*depth 2"):
        load_mtp_model(mimo_checkpoint, num_mtp=2)


def test_unknown_mtp_key_and_required_but_absent_weights(mimo_checkpoint, tmp_path):
    def add(state):
        state["model.mtp_layers.0.surprise.weight"] = torch.zeros(2)

    _edit(mimo_checkpoint, add)
    with pytest.raises(
        MTPCheckpointError, match=r"unexpected MTP weight 'model\.mtp_layers\.0\.surprise\.weight'"
    ):
        load_mtp_model(mimo_checkpoint)
    tiny_base("qwen2").save_pretrained(tmp_path / "plain")
    with pytest.raises(MTPCheckpointError, match="no MTP weights found"):
        load_mtp_model(tmp_path / "plain", mtp_init="checkpoint")
