"""Packed artifacts of Hugging Face models: they load without trust, give the same outputs, and are the
same bytes however the model was built or loaded (no local path, no loading state in them)."""

from __future__ import annotations

import copy

import pytest
import torch

import autoshrink as ash

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2)


def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "bert": transformers.BertForSequenceClassification(transformers.BertConfig(vocab_size=100, **SMALL)),
        "roberta": transformers.RobertaForSequenceClassification(transformers.RobertaConfig(vocab_size=100, **SMALL)),
        "distilbert": transformers.DistilBertForSequenceClassification(
            transformers.DistilBertConfig(vocab_size=100, dim=32, n_heads=4, hidden_dim=64, n_layers=2)
        ),
        "vit": transformers.ViTForImageClassification(
            transformers.ViTConfig(image_size=16, patch_size=8, num_labels=3, **SMALL)
        ),
    }


@pytest.mark.parametrize("name", ["bert", "roberta", "distilbert", "vit"])
def test_packed_transformers_load_without_trust_and_run_alike(name, tmp_path) -> None:
    model = models()[name].eval()
    policy = ash.Policy(
        layers={n: ash.LayerPolicy(bits=4) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    )
    small = ash.apply_policy(model, policy)
    ash.save_packed(small, tmp_path / "m.ashz")
    loaded = ash.load_packed(tmp_path / "m.ashz")
    assert type(loaded) is type(model) and type(loaded.config) is type(model.config)
    x = {"pixel_values": torch.randn(2, 3, 16, 16)} if name == "vit" else {"input_ids": torch.randint(3, 100, (2, 9))}
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, small(**x).logits)
    # a loaded model re-saves to the same size as the model it came from, and loses nothing more
    ash.save_packed(small, tmp_path / "ran.ashz")
    ash.save_packed(loaded, tmp_path / "again.ashz")
    assert (tmp_path / "again.ashz").stat().st_size == (tmp_path / "ran.ashz").stat().st_size
    again, first = ash.load_packed(tmp_path / "again.ashz").state_dict(), loaded.state_dict()
    assert again.keys() == first.keys() and all(torch.equal(again[k], v) for k, v in first.items())


def test_the_same_weights_pack_alike_however_the_model_was_loaded(tmp_path) -> None:
    model = models()["bert"].eval()
    copy.deepcopy(model).save_pretrained(tmp_path / "a-long-folder-name-on-this-machine")
    loaded = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "a-long-folder-name-on-this-machine")
    ash.save_packed(model, tmp_path / "built.ashz")
    ash.save_packed(loaded.eval(), tmp_path / "loaded.ashz")
    data = (tmp_path / "loaded.ashz").read_bytes()
    assert data == (tmp_path / "built.ashz").read_bytes()
    assert b"a-long-folder-name" not in data
    assert ash.load_packed(tmp_path / "loaded.ashz").config.name_or_path == ""
