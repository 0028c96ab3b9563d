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
