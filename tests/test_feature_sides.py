"""The side pickers and cards: specs, adapters found only in the allowed folders, training records read safely
(tiny random models)."""
from pathlib import Path

import pytest

from embedlab.adapters import AdapterError
from embedlab.features import common, evaluate, pairs
from embedlab.features import sides as sides_tab
from tiny import A, B, make_adapter, tiny_load_side


def test_bad_side_specs_get_a_message_listing_the_valid_ones(lab, adapter, tmp_path):
    with pytest.raises(common.UserError, match="side A: unknown model 'gpt-17'") as e:
        pairs.compare(lab, "gpt-17", A, "a", "b")
    assert "Valid sides here: " in str(e.value) and f"{A}+tiny-nli" in str(e.value) and B in str(e.value)
    make_adapter(tmp_path / "elsewhere")  # an adapter outside the allowed folders: no spec names it
    for bad, msg in [(str(tmp_path / "elsewhere"), "is not spelled"), (f"{A}+elsewhere", "no adapter 'elsewhere'"),
                     (f"{A}+..", "is not spelled"), (f"{A}+tiny-nli/../../etc", "is not spelled"),
                     (f"{A}+../etc", "is not spelled"), (f"{B}+tiny-nli", "no adapter 'tiny-nli' for tiny-bert")]:
        with pytest.raises(common.UserError, match=msg) as e:
            pairs.compare(lab, A, bad, "a", "b")
        assert "side B" in str(e.value) and f"{A}+tiny-nli" in str(e.value), bad


def test_hub_adapters_only_from_the_registry_and_only_online(lab, monkeypatch):
    with pytest.raises(common.UserError, match="not a published adapter"):
        pairs.compare(lab, A, f"{A}+someone/anything", "a", "b")
    import embedlab.side as S

    monkeypatch.setitem(S.MODELS, A, __import__("dataclasses").replace(S.MODELS[A], hub_adapters=("org/ad",)))
    monkeypatch.setattr(S, "hub_reachable", lambda: False)
    with pytest.raises(common.UserError, match="not reachable"):
        pairs.compare(lab, A, f"{A}+org/ad", "a", "b")
    assert f"{A}+org/ad" not in S.valid_specs()


def _adapter_with_record(folder: Path, record: str | bytes | None = None) -> Path:
    make_adapter(folder)
    if record is not None:
        (folder / "training.json").write_bytes(record if isinstance(record, bytes) else record.encode())
    return folder


def test_model_card_reads_no_record_outside_the_allowed_folders(lab, adapter, tmp_path):
    secret = tmp_path / "elsewhere"
    make_adapter(secret)
    (secret / "training.json").write_text('{"device": "SECRET-CONTENT", "training": {"steps": 7}}')
    with pytest.raises(common.UserError, match="no adapter 'elsewhere'") as e:
        sides_tab.model_card(f"{A}+elsewhere")
    assert "SECRET" not in str(e.value) and str(tmp_path) not in str(e.value)
    # inside the allowed folders, the record comes from the validated adapter
    root = tmp_path / "adapters"
    _adapter_with_record(root / "rec", '{"device": "CPU", "training": {"steps": 12, "effective_contrastive_batch": 32}}')
    card = sides_tab.model_card(f"{A}+rec")
    assert "trained on CPU, 12 steps × 32 triplets" in card and f"`{A}+rec`" in card
    (root / "notadapter").mkdir()  # a folder with only a training.json is not an adapter: its record is not shown
    (root / "notadapter" / "training.json").write_text('{"device": "SHOWN"}')
    with pytest.raises(common.UserError, match="no adapter 'notadapter'") as e:
        sides_tab.model_card(f"{A}+notadapter")
    assert "SHOWN" not in str(e.value)


def test_a_fifo_or_a_huge_training_record_neither_blocks_nor_loads(lab, adapter, tmp_path):
    import os
    import threading

    from embedlab.side import side_choices

    root = tmp_path / "adapters"
    fifo = _adapter_with_record(root / "fifo")
    os.mkfifo(fifo / "training.json")  # opening it for reading would block until a writer comes
    result = {}

    def card() -> None:
        try:
            result["choices"] = side_choices()  # the pickers' labels read each record: not this one
            result["card"] = sides_tab.model_card(f"{A}+fifo")
        except common.UserError as e:
            result["error"] = str(e)

    t = threading.Thread(target=card, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "model_card blocked on a FIFO"
    assert result["error"] == "training.json is not a regular file" and (f"{A}+fifo") in dict(result["choices"]).values()
    from embedlab.adapters import read_training_record

    with pytest.raises(AdapterError, match="not a regular file"):  # refused without blocking
        read_training_record(fifo)
    big = _adapter_with_record(root / "big", b'{"device": "' + b"x" * (2 << 20) + b'"}')
    with pytest.raises(common.UserError, match="larger than"):
        sides_tab.model_card(f"{A}+big")
    with pytest.raises(AdapterError, match="larger than"):
        read_training_record(big)


def test_a_link_out_of_the_allowed_folders_is_no_adapter_and_its_folder_is_not_listed(lab, adapter, tmp_path,
                                                                                        monkeypatch):
    outside = tmp_path / "outside"
    make_adapter(outside)
    (tmp_path / "adapters" / "link").symlink_to(outside)
    listed = []
    real_iterdir = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: listed.append(self) or real_iterdir(self))
    with pytest.raises(common.UserError, match="no adapter 'link'"):
        pairs.compare(lab, A, f"{A}+link", "a", "b")
    assert not [p for p in listed if outside in [p.resolve(), *p.resolve().parents]]


def test_gemma_card_shows_its_eos_token_and_data_is_escaped(lab, adapter, tmp_path, monkeypatch):
    import embedlab.side as side_mod

    real = side_mod.available_models
    monkeypatch.setattr(side_mod, "available_models", lambda: {**real(), "gemma3-270m": (True, "")})
    card = sides_tab.model_card("gemma3-270m")
    assert "pooling: EOS token '&lt;eos&gt;'" in card  # "<eos>" raw is an HTML tag: the browser swallowed it
    root = tmp_path / "adapters"
    _adapter_with_record(root / "x_y", '{"device": "<img src=x onerror=alert(1)>*bold*", "training": {"steps": "[a](b)"}}')
    card = sides_tab.model_card(f"{A}+x_y")
    assert "<img" not in card and "&lt;img" in card and r"\*bold\*" in card and r"\[a\](b)" in card
    assert r"**x\_y**" in card
    assert common.md("a|b`c") == r"a\|b\`c"


def test_a_non_string_side_is_an_error_not_a_default(lab):
    for bad in [3, None, ["x"], {"p": 1}]:
        with pytest.raises(common.UserError, match="side B must be a side spec"):
            pairs.compare(lab, A, bad, "a", "b")
    with pytest.raises(common.UserError, match="quick must be true or false"):
        evaluate.run_evaluation(lab, A, A, ["STS12"], 5)


def test_side_specs_take_ascii_digits_and_are_quoted_as_typed(lab, adapter):
    """Issue 20 #5: '@٥٠' is refused (not read as @50); a spec that looks like a path is quoted as typed."""
    with pytest.raises(common.UserError, match="is not spelled"):
        pairs.compare(lab, A, f"{adapter}@\u0665\u0660", "a", "b")
    with pytest.raises(common.UserError) as e:
        pairs.compare(lab, A, f"{A}+/proc/self", "a", "b")
    assert f"'{A}+/proc/self' is not spelled" in str(e.value), str(e.value)


def test_the_side_card_says_the_precision_its_model_runs_in(lab, monkeypatch):
    """Issue 21: the status line said the precision, the side's card did not. The card's details say it, and how
    the model runs in bf16 (registry data: ModelSpec.bf16 and bf16_fp32_modules)."""
    import dataclasses

    import embedlab.precision as precision
    from embedlab.registry import MODELS

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv(precision.ENV, "fp32")
    assert "Precision: **fp32**" in sides_tab.model_card(A)
    monkeypatch.setenv(precision.ENV, "auto")
    card = sides_tab.model_card(A)
    assert "Precision: **bf16 (auto)**: float32 weights under bf16 autocast" in card and "stay float32" not in card
    assert card.index("Precision") > card.index("<details>")  # in the folded details: the visible line stays short
    monkeypatch.setitem(MODELS, A, dataclasses.replace(MODELS[A], bf16_fp32_modules=(r"layers\.0",)))
    assert "under bf16 autocast; some layers stay float32" in sides_tab.model_card(A)
    monkeypatch.setitem(MODELS, A, dataclasses.replace(MODELS[A], bf16="weights"))
    assert "weights cast to bf16, LoRA weights float32" in sides_tab.model_card(A)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert "Precision: **fp32 (auto)**" in sides_tab.model_card(A)
    assert "Precision: **bf16 (auto)**" in sides_tab.model_card(A, device="cuda")  # a GPU: bf16 whatever the CPU


def test_attached_adapters_stay_within_their_budget_least_recently_used_first_never_one_in_use(lab, adapter, tmp_path):
    """Every side anyone names attaches its adapter to the shared model; past ``adapter_budget`` bytes per model the
    least recently used one nobody holds is detached (and attaches again when named), so memory stays bounded."""
    import numpy as np

    from embedlab.loading import detach_adapter
    from embedlab.side import parse_side

    root = tmp_path / "adapters"
    for i in range(4):
        make_adapter(root / f"tiny-{i}", seed=10 + i)
    sides = [parse_side(f"{A}+tiny-{i}") for i in range(4)]
    texts = ["a man is playing a guitar", "a dog runs in the park"]
    enc = lab.encoder(A)
    base = enc.embed(texts)
    first = lab.embed(sides[0], sides[0], texts)[0]
    one = next(iter(lab._adapters.values()))
    lab.adapter_budget = 2 * one  # room for two
    with lab.hold(sides[0]) as (held,):  # in use: never detached, however old
        for s in sides[1:]:
            lab.embed(s, s, texts)
            assert len(enc.adapters) <= 3 and held.adapter in enc.adapters
    assert len(enc.adapters) == 2  # the held one and the newest
    # attached again when named again: a new text's vector is that adapter's (as a fresh model with it attached gives)
    again = lab.embed(sides[0], sides[0], ["a man is playing a guitar", "a cat sleeps"])[0]
    ref_enc, ref_name = tiny_load_side(sides[0])
    np.testing.assert_allclose(again[1], ref_enc.embed(["a cat sleeps"], ref_name)[0], atol=1e-5)
    assert np.array_equal(again[0], first[0]) and len(enc.adapters) == 2
    assert not any(isinstance(k, tuple) for k in lab._pins)  # no pins left behind
    for name in list(enc.adapters):  # the last one detached unwraps the backbone: the base vectors as before
        detach_adapter(enc, name)
    assert not enc.adapters and not hasattr(enc.model, "peft_config")
    assert np.array_equal(enc.embed(texts), base)
