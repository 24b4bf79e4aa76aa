import contextlib
import json

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from cluster.commands.cli import main as cli_main
from engine.audit import (
    GAUDI_OPS,
    OUTSIDE_PATH,
    ROOT_PATH,
    AuditReport,
    Category,
    audit_forward,
    audit_model,
)
from engine.audit.rules import classify_op
from engine.families import FAMILIES


class DynamicBlock(nn.Module):
    """Every pattern the audit must flag, one line each."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positive = torch.nonzero(x > 0)  # data-dependent length
        picked = x[x > 0]  # boolean-mask indexing
        count = int((x > 0).sum().item())  # host sync
        pairs = torch.triu_indices(4, 4)  # falls back to the host on Gaudi
        return picked.sum() + positive.numel() + count + pairs.sum()


class DynamicToy(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.blocks = nn.ModuleList([nn.Identity(), DynamicBlock()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        if h.sum() > -1e9:  # Python control flow on a tensor: a host sync in the root
            h = self.blocks[0](h)
        return self.blocks[1](h)


class StaticToy(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.k = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(-1, -2) / 8**0.5
        mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        top = torch.topk(probs, k=2, dim=-1).values  # static shape: fine
        return torch.where(probs > 0.1, probs, 0.0) @ x + top.sum()


def ops_at(report: AuditReport, category: Category) -> set[tuple[str, str]]:
    return {(f.op, f.module_path) for f in report.by_category(category)}


def test_dynamic_toy_is_flagged_with_categories_and_module_paths():
    model = DynamicToy()
    x = torch.randn(3, 4)
    report = audit_forward(model, lambda: model(x))

    assert not report.is_clean
    assert ops_at(report, Category.DYNAMIC_SHAPE) == {
        ("aten.nonzero.default", "blocks.1"),
        ("aten.index.Tensor", "blocks.1"),
    }
    assert ops_at(report, Category.HOST_SYNC) == {
        ("aten._local_scalar_dense.default", ROOT_PATH),
        ("aten._local_scalar_dense.default", "blocks.1"),
    }
    assert ops_at(report, Category.GAUDI_LISTED) == {
        ("aten.nonzero.default", "blocks.1"),
        ("aten.triu_indices.default", "blocks.1"),
    }
    triu = next(f for f in report.findings if f.op == "aten.triu_indices.default")
    assert triu.count == 1
    assert triu.source == GAUDI_OPS["aten.triu_indices"].source
    assert triu.location is not None and triu.location.endswith(
        f"test_audit.py:{DynamicBlock.forward.__code__.co_firstlineno + 4}"
    )


def test_counts_accumulate_over_calls():
    model = DynamicToy()
    x = torch.randn(3, 4)

    def run_three_times():
        for _ in range(3):
            model(x)

    report = audit_forward(model, run_three_times)
    assert all(f.count == 3 for f in report.findings)


def test_static_toy_is_clean():
    model = StaticToy()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        report = audit_forward(model, lambda: model(x))
    assert report.is_clean, report.format()
    assert report.num_ops > 5
    assert "clean" in report.format()


def test_host_copies_and_value_dependent_ops_are_flagged_outside_the_model_too():
    model = nn.Identity()
    x = torch.tensor([1.0, 2.0, 2.0])

    def run():
        y = model(x)
        y.tolist()
        y.cpu()  # a no-op on the CPU, still a host copy on a device
        torch.equal(y, x)
        torch.unique(y)
        torch.repeat_interleave(y, torch.tensor([1, 0, 2]), dim=0)
        torch.repeat_interleave(y, torch.tensor([1, 0, 2]), dim=0, output_size=3)  # static
        y.masked_fill(y > 1, 0.0)  # static
        y[torch.tensor([0, 2])]  # integer indexing: static
        z = y.clone()
        z[z > 1] = 0.0  # boolean-mask write

    report = audit_forward(model, run)
    assert ops_at(report, Category.HOST_SYNC) == {
        ("Tensor.tolist", OUTSIDE_PATH),
        ("Tensor.cpu", OUTSIDE_PATH),
        ("aten.equal.default", OUTSIDE_PATH),
    }
    assert ops_at(report, Category.DYNAMIC_SHAPE) == {
        ("aten._unique2.default", OUTSIDE_PATH),
        ("aten.repeat_interleave.Tensor", OUTSIDE_PATH),
        ("aten.index_put_.default", OUTSIDE_PATH),
    }
    rows = report.by_category(Category.DYNAMIC_SHAPE)
    assert next(f for f in rows if "repeat_interleave" in f.op).count == 1


def test_module_path_is_restored_when_the_forward_raises():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.boom = Boom()

        def forward(self, x):
            with contextlib.suppress(RuntimeError):
                self.boom(x)
            return x.nonzero()

    model = Outer()
    report = audit_forward(model, lambda: model(torch.ones(2)))
    assert ops_at(report, Category.DYNAMIC_SHAPE) == {("aten.nonzero.default", ROOT_PATH)}
    # hooks are removed afterwards
    assert not model._forward_pre_hooks and not model.boom._forward_hooks


def test_format_and_json_hold_every_finding():
    model = DynamicToy()
    report = audit_forward(model, lambda: model(torch.randn(3, 4)))
    table = report.format()
    assert table.splitlines()[0].startswith("audit of DynamicToy: 6 findings")
    assert "aten.triu_indices.default" in table and "blocks.1" in table
    data = json.loads(report.to_json())
    assert data["is_clean"] is False
    assert len(data["findings"]) == len(report.findings) == 6
    assert {f["category"] for f in data["findings"]} == {c.value for c in Category}


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_audit_model_runs_transformers_prefill_and_decode(tiny_llama_dir):
    report = audit_model(str(tiny_llama_dir), forward="transformers")
    assert report.model_name == "LlamaForCausalLM"
    assert report.num_ops > 100
    # What transformers' own SDPA path does is reported, not judged; the lead reads it.
    print(report.format())
    for finding in report.findings:
        assert finding.count >= 1 and finding.module_path


def test_audit_model_takes_the_forward_to_run(tiny_llama_dir):
    def make_forward(model):
        ids = torch.zeros(1, 4, dtype=torch.long)
        return lambda: model(input_ids=ids, use_cache=False).logits.nonzero()

    report = audit_model(tiny_llama_dir, forward="transformers", make_forward=make_forward)
    assert ("aten.nonzero.default", OUTSIDE_PATH) in ops_at(report, Category.DYNAMIC_SHAPE)


def test_audit_model_rejects_a_path_that_is_not_a_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_path must be a local model directory"):
        audit_model(tmp_path / "missing")


def test_cli_prints_json_and_exit_code_follows_the_report(tiny_llama_dir, capsys):
    code = cli_main(
        ["audit", "--model", str(tiny_llama_dir), "--forward", "transformers", "--json"]
    )
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "LlamaForCausalLM"
    assert code == (0 if data["is_clean"] else 1)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_engine_forward_audits_clean_for_every_family(family, tiny_model_dir):
    """The engine's padded prefill + decode steps over the paged cache have no dynamic op,
    no host sync and no op on the Gaudi list, in every supported family."""
    report = audit_model(tiny_model_dir(family), forward="engine")
    assert report.num_ops > 50
    assert report.is_clean, report.format()


@pytest.mark.parametrize(
    "family", ["qwen2", "mixtral", "falcon", "starcoder2", "gpt_bigcode", "phi"]
)
def test_cli_engine_forward_exits_0_when_clean(family, tiny_model_dir, capsys):
    """`gaudi-serve audit` on the seeds' families (a Mixtral exited 2, unsupported, before)."""
    assert cli_main(["audit", "--model", str(tiny_model_dir(family))]) == 0
    assert "clean" in capsys.readouterr().out.lower()


def test_cli_exit_code_2_for_a_missing_model(tmp_path, capsys):
    assert cli_main(["audit", "--model", str(tmp_path / "missing")]) == 2
    assert "cannot load model" in capsys.readouterr().err


def test_device_to_host_copies_are_host_syncs():
    # No accelerator here: a meta tensor stands in for a device tensor; the rule only reads
    # devices, the op is not run.
    device_tensor = torch.empty(2, device="meta")
    host_tensor = torch.empty(2)
    to_host = classify_op(torch.ops.aten._to_copy.default, (device_tensor,), {"device": "cpu"})
    copy_back = classify_op(torch.ops.aten.copy_.default, (host_tensor, device_tensor), {})
    to_device = classify_op(torch.ops.aten._to_copy.default, (host_tensor,), {"device": "meta"})
    assert [c[0] for c in to_host] == [Category.HOST_SYNC]
    assert [c[0] for c in copy_back] == [Category.HOST_SYNC]
    assert to_device == []


def test_gaudi_table_names_real_aten_ops_with_a_reason_and_source():
    for name, note in GAUDI_OPS.items():
        namespace, op = name.split(".", 1)
        assert namespace == "aten" and hasattr(torch.ops.aten, op), name
        assert note.reason and note.source, name
