"""The shipped SmolLM2 adapter in the standard PEFT form, on the real model (integration)."""
import json
import shutil

import numpy as np
import pytest
import torch

from embedlab.adapters import PEFT_PREFIX, shipped_adapters
from embedlab.loading import attach_adapter, load_encoder

pytestmark = pytest.mark.integration
SENTS = ["A man is playing a guitar.", "A woman is slicing an onion.", "Hi",
         "The quick brown fox jumps over the lazy dog near the river bank this morning."]


@pytest.fixture(scope="module")
def shipped():
    return shipped_adapters("smollm2-135m")[0]


@pytest.fixture(scope="module")
def enc(shipped):
    e = load_encoder("smollm2-135m", device="cpu")
    attach_adapter(e, shipped)
    return e


def test_shipped_adapter_is_in_the_causal_lm_form(shipped):
    from safetensors import safe_open

    cfg = json.loads((shipped / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and cfg["task_type"] == "CAUSAL_LM"
    with safe_open(str(shipped / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert len(keys) == 120 and all(k.startswith(PEFT_PREFIX + "model.layers.") for k in keys)
    assert (shipped / "README.md").read_text().startswith("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n")


def test_backbone_form_copy_embeds_bit_for_bit_the_same(enc, shipped, tmp_path):
    """What the old (bare-backbone) file held, rebuilt by renaming the keys back, loads to the same vectors."""
    from safetensors.torch import load_file, save_file

    old = tmp_path / "old"
    shutil.copytree(shipped, old)
    state = load_file(str(old / "adapter_model.safetensors"))
    save_file({PEFT_PREFIX + k[len(PEFT_PREFIX + "model."):]: v for k, v in state.items()},
              str(old / "adapter_model.safetensors"), metadata={"format": "pt"})
    new = enc.embed(SENTS, enc.adapters[next(iter(enc.adapters))].name)
    info = attach_adapter(enc, old)
    assert np.array_equal(enc.embed(SENTS, info.name), new)


def test_standard_peft_load_applies_all_weights_and_the_card_snippet_matches(enc, shipped):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from embedlab.modelcard import usage_snippet

    lm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(enc.weights_dir, dtype=torch.float32),
                                   str(shipped))
    saved = load_file(str(shipped / "adapter_model.safetensors"))
    lora_b = {n: p for n, p in lm.named_parameters() if "lora_B" in n}
    assert len(lora_b) == 60
    applied = sum(torch.equal(p, saved[n.replace(".default", "")]) for n, p in lora_b.items())
    assert applied == 60
    ns: dict = {}
    name = next(iter(enc.adapters))  # the shipped adapter, attached first
    exec(usage_snippet(enc.spec, enc.prompt_for(name), enc.weights_dir, str(shipped), enc.max_length), ns)
    assert np.abs(ns["embed"](SENTS).numpy() - enc.embed(SENTS, name)).max() < 1e-4
