"""The shipped data is what SOURCES.md says it is, and the training triplets rebuild from it exactly."""
from __future__ import annotations

import gzip
import hashlib
import json
import re

from embedlab.nli import build_snli_triplets, write_triplets
from embedlab.sts import DATA_DIR


def test_snli_sources_match_their_recorded_sha256():
    """The SentEval files ship gzipped; their uncompressed bytes are the ones SOURCES.md records."""
    table = (DATA_DIR / "SOURCES.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (NLI/snli_senteval/\S+) \|.*?\| ([0-9a-f]{64}) \|", table, flags=re.M)
    assert len(rows) == 6
    for rel, sha in rows:
        data = gzip.decompress((DATA_DIR / f"{rel}.gz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == sha, rel


def test_build_data_reproduces_the_shipped_triplets(tmp_path):
    meta = json.loads((DATA_DIR / "NLI" / "snli_all_triplets.json").read_text())
    rows, counts = build_snli_triplets()
    assert counts["triplets"] == meta["rows"] == len(rows)
    assert write_triplets(rows, tmp_path / "t.csv") == meta["sha256"]


# --- the multi-genre set ------------------------------------------------------------------------------------

import csv  # noqa: E402
import lzma  # noqa: E402

import pytest  # noqa: E402

from embedlab.nli import (CAD_SOURCE, SNLI_SOURCE, DataError, build_multigenre_triplets, cad_groups,  # noqa: E402
                          group_triplets, mnli_groups, normalise, read_triplets, select_triplets, write_multigenre)


def test_nli_xz_sources_match_their_recorded_sha256():
    """MultiNLI dev, counterfactual SNLI, STSBenchmark's train split and STS16's post-editing inputs ship
    xz-compressed; their uncompressed bytes are SOURCES.md's."""
    table = (DATA_DIR / "SOURCES.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\S+\.xz) \|.*?\| (\d+) \| ([0-9a-f]{64}) \|", table, flags=re.M)
    assert len(rows) == 5
    for rel, size, sha in rows:
        data = lzma.decompress((DATA_DIR / rel).read_bytes())
        assert (len(data), hashlib.sha256(data).hexdigest()) == (int(size), sha), rel


def test_mnli_groups_by_pair_id_and_takes_the_class_from_the_label():
    text = ("pairID,sentence1,sentence2,label\n"
            "10e,P one,E one,entailment\n11c,P two,C two,contradiction\n10c,P one,C one,contradiction\n"
            "10n,P one,N one,neutral\n"
            "11e,P two,labelled c by its prompt letter,contradiction\n"  # the letter is the prompt, the label wins
            "110e,P three,E three,entailment\n")  # 110 is not 11: the id minus one letter, not a prefix
    groups = mnli_groups(text)
    assert list(groups) == ["10", "11", "110"]
    assert groups["10"] == {"premise": "P one", "entailment": ["E one"], "contradiction": ["C one"]}
    assert groups["11"]["contradiction"] == ["C two", "labelled c by its prompt letter"]
    assert groups["11"]["entailment"] == []
    assert group_triplets(groups) == [("P one", "E one", "C one")]
    with pytest.raises(DataError, match="pairID"):
        mnli_groups("pairID,sentence1,sentence2,label\n12x,a,b,entailment\n")


def test_cad_groups_by_premise_text_and_pairs_every_entailment_with_every_contradiction():
    text = ('sentence1\tsentence2\tgold_label\n'
            'A man rides a "red" bike.\tA man rides.\tentailment\n'
            'A man rides a "red" bike.\tA man walks.\tcontradiction\n'
            'A man rides a "red" bike.\tA man is on a bike.\tentailment\n'
            'A man rides a blue bike.\tA man rides.\tcontradiction\n'  # an edited premise is its own group
            'A man rides a "red" bike.\tA man waits.\tneutral\n')
    groups = cad_groups(text)
    assert len(groups) == 2
    assert group_triplets(groups) == [('A man rides a "red" bike.', "A man rides.", "A man walks."),
                                      ('A man rides a "red" bike.', "A man is on a bike.", "A man walks.")]


def test_select_filters_overlap_degenerate_and_duplicates_in_source_order():
    banned = {normalise("An evaluation sentence.")}
    sources = {
        "a": [("P", "E", "C"), ("An evaluation sentence.", "E", "C"), ("P", "same", "Same!")],
        "b": [("p ", "e.", "C"), ("P2", "E", "An  evaluation sentence"), ("P2", "E2", "C2")],
    }
    rows, counts = select_triplets(sources, banned)
    assert rows == [("P", "E", "C", "a"), ("P2", "E2", "C2", "b")]
    assert counts["a"] == {"candidates": 3, "dropped_overlap": 1, "dropped_degenerate": 1, "dropped_duplicate": 0, "kept": 1}
    assert counts["b"] == {"candidates": 3, "dropped_overlap": 1, "dropped_degenerate": 0, "dropped_duplicate": 1, "kept": 1}


def test_multigenre_set_rebuilds_to_its_recorded_sha256_with_a_source_column(tmp_path):
    """The shipped sources rebuild the recorded multi-genre CSV; train.py's reader takes it (plain or .xz)."""
    meta = json.loads((DATA_DIR / "NLI" / "multigenre_triplets.json").read_text())
    rows, counts = build_multigenre_triplets()
    assert len(rows) == meta["rows"] == sum(c["kept"] for c in counts.values())
    assert counts == meta["sources"]
    # today's SNLI triplets come first, unchanged, then the new sets
    snli, _ = build_snli_triplets()
    assert [r[:3] for r in rows[:len(snli)]] == snli and {r[3] for r in rows[:len(snli)]} == {SNLI_SOURCE}
    assert {r[3] for r in rows} == set(counts) and rows[-1][3] == CAD_SOURCE
    for c in counts.values():
        assert c["candidates"] == c["dropped_overlap"] + c["dropped_degenerate"] + c["dropped_duplicate"] + c["kept"]
    assert len({tuple(normalise(x) for x in r[:3]) for r in rows}) == len(rows)
    assert write_multigenre(rows, tmp_path / "m.csv") == meta["sha256_csv"]
    assert write_multigenre(rows, tmp_path / "m.csv.xz") == meta["sha256_csv"]
    with open(tmp_path / "m.csv", encoding="utf-8", newline="") as f:
        assert next(csv.reader(f)) == ["sent0", "sent1", "hard_neg", "source"]
    plain, packed = read_triplets(tmp_path / "m.csv"), read_triplets(tmp_path / "m.csv.xz")
    assert len(plain) == len(packed) == len(rows)
    assert (plain.anchor, plain.positive, plain.negative) == (packed.anchor, packed.positive, packed.negative)
    assert plain.negative[-1] == rows[-1][2]


def test_read_triplets_refuses_a_corrupt_compressed_file(tmp_path):
    bad = tmp_path / "t.csv.xz"
    bad.write_bytes(lzma.compress(b"sent0,sent1,hard_neg\na,b,c\nd,e,f\n")[:-8])
    with pytest.raises(DataError, match="corrupt"):
        read_triplets(bad)


@pytest.mark.parametrize("head", [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage", b"\xfd7zXZ\x00garbage"])
def test_read_triplets_refuses_compressed_garbage(tmp_path, head):
    bad = tmp_path / "t.csv"
    bad.write_bytes(head)
    with pytest.raises(DataError, match="corrupt"):
        read_triplets(bad)
