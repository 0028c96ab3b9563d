"""The README's gradio_client examples run as written against a started app (only the address differs)."""
import contextlib
import io
import re

import pytest

from embedlab import ROOT

pytestmark = pytest.mark.integration
README = ROOT / "README.md"


def readme_examples() -> str:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- api-examples:start -->\s*```python\n(.*?)```\s*<!-- api-examples:end -->", text, re.S)
    assert block, "README has no API examples block"
    return block.group(1)


def test_readme_api_examples_run_as_written(app_server):
    """The examples use the page's default pair (the registry's DEFAULT_PAIR) and MiniLM beside its tuned side."""
    from embedlab.registry import DEFAULT_PAIR, MODELS

    base, tuned = DEFAULT_PAIR
    code = readme_examples()
    assert 'Client("http://127.0.0.1:7860/")' in code and f'"minilm-l6", "{tuned}"' in code
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.replace("http://127.0.0.1:7860/", app_server.url), "README.md", "exec"), {})
    printed = out.getvalue()
    assert f"'side_a': '{base}', 'side_b': '{tuned}'" in printed
    assert re.search(rf"minilm-l6: -?[01]\.\d{{3}}   {re.escape(tuned)}: -?[01]\.\d{{3}}", printed)
    assert "Overlap@5" in printed and f"384 {MODELS[base].dim} 2 2" in printed
    assert "done 2 True No run of this session is going." in printed  # /train, /compare with its side, /stop_training
    assert app_server.alive()
