"""Rebuild a SentencePiece-BPE tokenizer from a GGUF file's vocabulary and scores.

transformers 5.17 turns the Gemma 3 GGUF vocabulary into a Unigram model over its
BPE scores, which tokenises character by character ("The" -> T, h, e). SentencePiece
BPE merges two pieces when the merged piece is in the vocabulary, highest score
first; we derive those merges from the scores (as transformers' SentencePieceExtractor
does for .model files) and build a byte-fallback BPE tokenizer.
"""
from __future__ import annotations

from pathlib import Path

CONTROL, USER_DEFINED = 3, 4  # GGUF token types that must never be split


def _read(path: Path) -> tuple[list[str], list[float], list[int], dict[str, int]]:
    from gguf import GGUFReader

    r = GGUFReader(str(path))

    def arr(name: str) -> list:
        f = r.fields[name]
        return [f.parts[i] for i in f.data]

    tokens = [bytes(p).decode("utf-8") for p in arr("tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in arr("tokenizer.ggml.scores")]
    types = [int(p[0]) for p in arr("tokenizer.ggml.token_type")]
    ids = {k.rsplit(".", 1)[-1]: int(r.fields[k].parts[r.fields[k].data[0]][0])
           for k in r.fields if k.startswith("tokenizer.ggml.") and k.endswith("_token_id")}
    return tokens, scores, types, ids


def spm_bpe_tokenizer(path: Path):
    """A PreTrainedTokenizerFast equivalent to the GGUF's SentencePiece-BPE vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    tokens, scores, types, ids = _read(path)
    vocab = {t: i for i, t in enumerate(tokens)}
    mergeable = {t: s for t, s, ty in zip(tokens, scores, types) if ty not in (CONTROL, USER_DEFINED)}
    merges = []
    for piece, score in mergeable.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in mergeable and right in mergeable:
                merges.append((score, vocab[left], vocab[right], left, right))
    merges.sort(key=lambda m: (-m[0], m[1], m[2]))  # highest-scoring merged piece first
    unk = tokens[ids.get("unknown_token_id", 0)]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[(m[3], m[4]) for m in merges], unk_token=unk,
                              byte_fallback=True, fuse_unk=True, dropout=None))
    tk.normalizer = normalizers.Replace(" ", "▁")
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tk.add_special_tokens([AddedToken(t, special=ty == CONTROL, normalized=False)
                           for t, ty in zip(tokens, types) if ty in (CONTROL, USER_DEFINED)])
    name = lambda key: tokens[ids[key]] if key in ids else None  # noqa: E731
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=name("bos_token_id"), eos_token=name("eos_token_id"),
                                   unk_token=unk, pad_token=name("padding_token_id"))
