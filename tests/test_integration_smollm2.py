"""Integration tests on SmolLM2-135M (one click from the default pair), from its PyPI package."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from embedlab.encode import Encoder
from embedlab.loading import gguf_file, load_encoder
from embedlab.registry import get_spec

pytestmark = pytest.mark.integration
SENTS = ["A man is playing a guitar.", "A woman is slicing an onion.", "Hi",
         "The quick brown fox jumps over the lazy dog near the river bank this morning."]


@pytest.fixture(scope="module")
def enc():
    return load_encoder("smollm2-135m", device="cpu")


def test_backbone_only_no_lm_head(enc):
    assert enc.dim == 576
    assert not hasattr(enc.model, "lm_head")
    assert type(enc.model).__name__ == "LlamaModel"


def test_eos_is_im_end_and_no_bos(enc):
    from embedlab.encode import tokenize

    ids, _ = tokenize(enc.tokenizer, enc.spec, ["hello world"], enc.max_length)
    assert ids[0][-1] == 2 and enc.tokenizer.convert_ids_to_tokens(2) == "<|im_end|>"
    assert 1 not in ids[0][:1]  # no <|im_start|>/BOS in front
    assert enc.pad_id == 2


def test_batched_equals_single(enc):
    batched = enc.embed(SENTS)
    single = np.stack([enc.embed([s])[0] for s in SENTS])
    assert batched.dtype == np.float32 and batched.shape == (4, 576)
    assert (np.einsum("ij,ij->i", batched, single) >= 0.9999).all()


def test_cached_copy_equals_gguf_load(enc):
    from transformers import AutoModel

    path = gguf_file(get_spec("smollm2-135m"))
    gguf_model = AutoModel.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    direct = Encoder(enc.spec, gguf_model, enc.tokenizer, torch.device("cpu"), enc.max_length)
    a, b = enc.embed(SENTS), direct.embed(SENTS)
    assert np.abs(a - b).max() < 1e-5


def test_eval_cli_end_to_end(tmp_path):
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "embedlab", "eval", "--model", "smollm2-135m", "--tasks", "STS17",
                        "STSBenchmark", "--limit", "40", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "STSBenchmark" in p.stdout and "average" in p.stdout
    rec = json.loads(out.read_text())
    assert set(rec) >= {"model", "adapter", "tasks", "average", "pairs", "seconds"}
    assert rec["pairs"] == {"STS17": 40, "STSBenchmark": 40} and rec["adapter"] is None
    assert all(-100 <= v <= 100 for v in rec["tasks"].values())


@pytest.mark.parametrize("args,msg", [
    (["--model", "gpt-17"], "unknown model"),
    (["--model", "phi-2"], "Hugging Face Hub"),
    (["--tasks", "STS99"], "unknown task"),
    (["--adapter", "/nonexistent/adapter"], "not a folder"),
    (["--limit", "1"], "at least 2"),
])
def test_eval_cli_bad_input(args, msg):
    p = subprocess.run([sys.executable, "-m", "embedlab", "eval", *args], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr
