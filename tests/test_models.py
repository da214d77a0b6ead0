"""Model name resolution (metareward.models): an unknown model fails in one line, in ``run --check``
and before a run directory exists, naming what was tried. No test here touches the network: the hub
is either declared offline or replaced by a stand-in."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest

from metareward import cli, models
from metareward.errors import InputError

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny-cpu.yaml")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_in_hf_cache", lambda name: False)


def test_unknown_hub_id_offline_names_everything_tried(offline: None) -> None:
    with pytest.raises(InputError) as e:
        models.check_model_name("no/such-model")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("model: cannot find model 'no/such-model': no local folder 'no/such-model'")
    assert "not an embedded model (smollm2-135m)" in msg
    assert "not in the Hugging Face cache (" in msg
    assert msg.endswith("and the hub is offline (HF_HUB_OFFLINE is set)")


def test_unknown_hub_id_with_unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(models, "_in_hf_cache", lambda name: False)

    def unreachable(name: str, timeout: float | None = None):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    with pytest.raises(InputError, match=r"the hub is unreachable \(\[Errno -2\] Name or service not known\)$"):
        models.check_model_name("no/such-model", field="--model")


def test_hub_id_found_on_the_hub_or_in_the_cache_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(models, "_in_hf_cache", lambda name: False)
    monkeypatch.setattr(huggingface_hub, "model_info", lambda name, timeout=None: object())
    models.check_model_name("org/exists")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_in_hf_cache", lambda name: name == "org/cached")
    models.check_model_name("org/cached")
    with pytest.raises(InputError):
        models.check_model_name("org/exists")


def test_local_and_malformed_names(tmp_path: Path, offline: None) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(InputError, match="is a folder without config.json"):
        models.check_model_name(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text("{}")
    models.check_model_name(str(tmp_path / "m"))
    with pytest.raises(InputError, match=r"unknown model 'nosuch': .*and not a Hugging Face id like 'org/name'$"):
        models.check_model_name("nosuch")


@pytest.mark.parametrize("check", [True, False])
def test_run_with_unknown_model_fails_in_one_line_and_leaves_no_run_dir(
    check: bool, tmp_path: Path, offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    argv = ["run", TINY, "--set", "model=no/such-model", "--run-dir", str(run_dir)] + (["--check"] if check else [])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("metareward: error: model: cannot find model 'no/such-model'")
    assert not run_dir.exists()
