"""Tiny random models and tokenizers built in memory (no files, no downloads)."""
from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel, PreTrainedTokenizerFast

from embedlab.encode import Encoder
from embedlab.registry import ModelSpec, Source

WORDS = [w for w in "a the man woman dog cat is are playing eating guitar food running park a an on in of with".split()]
VOCAB_WORDS = list(dict.fromkeys(WORDS + list(string.ascii_lowercase) + [str(i) for i in range(10)] + list(".,!?'")))

LLAMA_SPEC = ModelSpec(
    key="tiny-llama", title="tiny random Llama", source=Source(kind="hub", repo="tiny/llama"), pooling="eos",
    causal=True, params_m=0.1, licence="test", eos_token="</s>", add_bos=True, max_length=32,
    base_ids=("tiny-llama",),
)
BERT_SPEC = ModelSpec(
    key="tiny-bert", title="tiny random BERT", source=Source(kind="hub", repo="tiny/bert"), pooling="mean",
    causal=False, params_m=0.1, licence="test", lora_targets=("query", "value"), max_length=32,
    base_ids=("tiny-bert",),
)


def _tokenizer(specials: list[str], bert: bool) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(specials + VOCAB_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>" if not bert else "[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Split("", "isolated")])
    if bert:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def tiny_llama(seed: int = 0) -> tuple[LlamaModel, PreTrainedTokenizerFast]:
    tok = _tokenizer(["<unk>", "<s>", "</s>"], bert=False)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=1, eos_token_id=2)
    return LlamaModel(cfg).eval(), tok


def tiny_bert(seed: int = 0, hidden: int = 32) -> tuple[BertModel, PreTrainedTokenizerFast]:
    tok = _tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]"], bert=True)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=64, pad_token_id=0)
    return BertModel(cfg, add_pooling_layer=False).eval(), tok


def tiny_encoder(kind: str = "llama", seed: int = 0, max_length: int | None = None, **kw) -> Encoder:
    """``kw``: tiny_bert's ``hidden`` (width)."""
    model, tok = (tiny_llama if kind == "llama" else tiny_bert)(seed, **kw)
    spec = LLAMA_SPEC if kind == "llama" else BERT_SPEC
    return Encoder(spec, model, tok, torch.device("cpu"), max_length or spec.max_length)


def make_adapter(folder, kind: str = "llama", seed: int = 1, base: str | None = None) -> None:
    """Save a random (non-zero) LoRA adapter for the tiny model into ``folder``."""
    from peft import LoraConfig, get_peft_model

    model, _ = (tiny_llama if kind == "llama" else tiny_bert)(0)
    spec = LLAMA_SPEC if kind == "llama" else BERT_SPEC
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(spec.lora_targets)))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # B starts at zero; make the adapter actually change outputs
    peft_model.peft_config["default"].base_model_name_or_path = base or spec.key
    peft_model.save_pretrained(str(folder))


A, B = LLAMA_SPEC.key, BERT_SPEC.key  # side specs of the two tiny models once registered


def tiny_models(monkeypatch) -> dict[str, Encoder]:
    """Register the tiny Llama and BERT as loadable models (for side specs) and return an encoder of each.

    Side parsing checks a model is in the registry and loadable here; the caller serves these
    encoders from its Lab (monkeypatch ``lab.encoder``)."""
    import embedlab.side as side_mod
    from embedlab.registry import MODELS

    monkeypatch.setitem(MODELS, A, LLAMA_SPEC)
    monkeypatch.setitem(MODELS, B, BERT_SPEC)
    real = side_mod.available_models
    monkeypatch.setattr(side_mod, "available_models", lambda: {**real(), A: (True, ""), B: (True, "")})
    return {A: tiny_encoder("llama"), B: tiny_encoder("bert", hidden=48)}  # two widths: 32 and 48


def tiny_load_side(side, device="cpu"):
    """Stands in for :func:`embedlab.export.load_side` (the real one loads the registry's weights): a fresh tiny
    encoder of ``side``'s model with its adapter attached, as the lab attaches it (the side's prompt)."""
    import dataclasses

    from embedlab.loading import attach_adapter

    enc = tiny_encoder("llama" if side.model == LLAMA_SPEC.key else "bert")
    if side.weights is None:
        return enc, None
    info = attach_adapter(enc, side.weights)
    if info.prompt != side.prompt:
        enc.adapters[info.name] = dataclasses.replace(info, prompt=side.prompt)
    return enc, info.name
