"""`gaudi-serve audit` on the tiny vision-language models: the engine's forward, an image
encoded (at a patch bucket, or into a cross-attention slot) and a prefill taking it
included, is clean."""

from __future__ import annotations

from cluster.commands.cli import main as cli_main
from engine.audit import audit_model


def test_engine_forward_with_an_image_audits_clean(tiny_llava_next_dir, tiny_model_dir):
    report = audit_model(tiny_llava_next_dir, forward="engine")
    assert report.is_clean, report.format()
    # the same text model without the vision tower traces far fewer ops
    assert report.num_ops > audit_model(tiny_model_dir("llama"), forward="engine").num_ops + 50


def test_cli_audit_exits_0(tiny_llava_next_dir, capsys):
    assert cli_main(["audit", "--model", str(tiny_llava_next_dir)]) == 0
    assert "clean" in capsys.readouterr().out.lower()


def test_cli_audit_of_llama_3_2_vision_exits_0(tiny_mllama_dir, capsys):
    """mllama: an image encoded into a cross-attention slot, a prefill reading it."""
    assert cli_main(["audit", "--model", str(tiny_mllama_dir)]) == 0
    assert "clean" in capsys.readouterr().out.lower()
