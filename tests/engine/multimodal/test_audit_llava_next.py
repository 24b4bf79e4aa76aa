"""`gaudi-serve audit` on the tiny Llava-NeXT: the engine's forward, an image encoded at a
patch bucket and a prefill taking its features included, is clean."""

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
