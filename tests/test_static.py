"""Static checks on the source and the Streamlit config: no unpickling anywhere, a config fit for a
public deployment, error messages without paths."""
from __future__ import annotations

import re

import pytest

from helpers import ROOT


@pytest.mark.reliability("pickles")
def test_no_code_path_unpickles():
    """Static guard: no pickle loads in the app or engine, torch.load only with weights_only=True."""
    offenders = []
    for f in [*ROOT.glob("core/*.py"), *ROOT.glob("app_pages/*.py"), ROOT / "streamlit_app.py"]:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"pickle\.loads?\(|allow_pickle\s*=\s*True|joblib\.load|dill\.", code) or (
                    "torch.load(" in code and "weights_only=True" not in code):
                offenders.append(f"{f.name}:{i}: {line.strip()}")
    assert not offenders, offenders


@pytest.mark.reliability("error messages")
def test_streamlit_config_is_fit_for_a_public_deployment():
    import tomllib

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["maxUploadSize"] == 20  # MB (README): digits and sample zips, not arbitrary files
    assert cfg["server"]["maxMessageSize"] == 50  # MB (README)
    assert cfg["client"]["showErrorDetails"] == "none"  # no tracebacks (paths, code) for visitors
    assert cfg["client"]["toolbarMode"] == "minimal"
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["theme"]["base"] in ("dark", "light") and re.fullmatch(r"#[0-9A-Fa-f]{6}", cfg["theme"]["primaryColor"])
    assert cfg["logger"]["level"] in ("warning", "error")


@pytest.mark.reliability("error messages")
def test_public_error_strips_paths():
    from app_pages.common import public_error

    msg = public_error(RuntimeError("/work/shared/mnist: missing t10k-images; kept: /tmp/s/ab12/runs/x/model."
                                    "safetensors. See https://example.com/a/b or C:\\Users\\bob\\m.onnx"))
    assert msg == ("mnist: missing t10k-images; kept: model.safetensors. See https://example.com/a/b or m.onnx")
