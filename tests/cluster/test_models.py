"""`gaudi-serve models prepare`: where it prepares (--cache, else GAUDI_SERVE_MODELS_DIR, else
~/.cache/gaudi-serve/models) and that a prepared folder is left alone at once. The real
fetch and conversion run in `make install`; tests/engine/test_smollm2.py checks its result."""

from __future__ import annotations

import pytest

from cluster.commands.cli import main
from cluster.env import models_dir
from engine.assets import default_models_dir
from tests.engine.fake_prepared import make_fake_prepared


def test_models_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("GAUDI_SERVE_MODELS_DIR", raising=False)
    assert models_dir() == default_models_dir()
    monkeypatch.setenv("GAUDI_SERVE_MODELS_DIR", str(tmp_path))
    assert models_dir() == tmp_path.resolve()
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("GAUDI_SERVE_MODELS_DIR", str(not_a_dir))
    with pytest.raises(ValueError, match=r"GAUDI_SERVE_MODELS_DIR=.*is not a directory"):
        models_dir()


def test_prepare_skips_a_prepared_folder(monkeypatch, tmp_path, capsys):
    folder = make_fake_prepared(tmp_path / "cache")
    assert main(["models", "prepare", "--cache", str(tmp_path / "cache")]) == 0
    assert f"already prepared at {folder}" in capsys.readouterr().out
    monkeypatch.setenv("GAUDI_SERVE_MODELS_DIR", str(tmp_path / "cache"))
    assert main(["models", "prepare"]) == 0
    assert "already prepared" in capsys.readouterr().out


def test_a_bad_models_dir_exits_2_naming_the_variable(monkeypatch, tmp_path, capsys):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("GAUDI_SERVE_MODELS_DIR", str(not_a_dir))
    assert main(["models", "prepare"]) == 2
    assert "GAUDI_SERVE_MODELS_DIR" in capsys.readouterr().err
