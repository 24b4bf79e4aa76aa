"""The report's time split on hand-made traces: device kernels (CUDA/HPU) vs host ops,
host and idle gaps, overlap priority, and the op classification."""

from __future__ import annotations

import pytest

from engine.profiling.classify import classify
from engine.profiling.report import analyze, format_report


def ev(cat, name, ts, dur, tid=1, **args):
    return {
        "ph": "X",
        "cat": cat,
        "name": name,
        "ts": ts,
        "dur": dur,
        "pid": 1,
        "tid": tid,
        "args": args,
    }


def test_device_timeline_split_with_host_and_idle():
    # a 100 us decode step: the host runs a linear (10-30, launching its kernel) and an
    # add (60-70); kernels run at 30-50 (the linear's gemm) and 70-80 (the add).
    trace = {
        "traceEvents": [
            ev("user_annotation", "step 0 decode bs1-q1-blk1 graph", 0, 100),
            ev("cpu_op", "aten::linear", 10, 20, **{"External id": 7}),
            ev("cpu_op", "aten::add", 60, 10, **{"External id": 8}),
            ev("kernel", "sm90_xmma_gemm", 30, 20, tid=7, **{"External id": 7}),
            ev("kernel", "elementwise_kernel", 70, 10, tid=7, **{"External id": 8}),
        ]
    }
    report = analyze(trace)
    assert report["device_timeline"] is True
    (step,) = report["steps"]
    assert (step["kind"], step["bucket"], step["mode"]) == ("decode", "bs1-q1-blk1", "graph")
    shares_us = {k: round(v * 1e3, 6) for k, v in step["shares_ms"].items()}
    # idle: inside host ops with no kernel (10-30, 60-70); host: the rest of the gaps
    assert shares_us == {
        "matmul": 20,
        "attention": 0,
        "elementwise": 10,
        "communication": 0,
        "host": 40,
        "idle": 30,
    }
    assert report["by_kind"]["decode"]["graph_steps"] == 1
    assert "decode" in format_report(report)


def test_cpu_ops_nested_and_overlapping_count_once():
    trace = {
        "traceEvents": [
            ev("user_annotation", "step 3 prefill bs2-q16-blk1 eager", 0, 100),
            ev("user_annotation", "module model.layers.0.self_attn", 5, 60),
            ev("user_annotation", "module model.layers.0.self_attn.q_proj", 5, 20),
            ev("cpu_op", "aten::linear", 5, 20),
            ev("cpu_op", "aten::addmm", 6, 18),  # nested in linear: counted in it
            ev("cpu_op", "aten::mul", 30, 10),  # rotary, in the attention core
            ev("cpu_op", "aten::scaled_dot_product_attention", 45, 15),
            ev("cpu_op", "c10d::allreduce_", 80, 10),
        ]
    }
    report = analyze(trace)
    (step,) = report["steps"]
    assert step["index"] == 3 and step["kind"] == "prefill"
    shares_us = {k: round(v * 1e3, 6) for k, v in step["shares_ms"].items()}
    assert shares_us == {
        "matmul": 20,
        "attention": 25,
        "elementwise": 0,
        "communication": 10,
        "host": 45,
        "idle": 0,
    }
    assert sum(shares_us.values()) == pytest.approx(100)
    assert {m["module"] for m in report["top_modules"]} == {
        "model.layers.*.self_attn",
        "model.layers.*.self_attn.q_proj",
    }
    assert report["top_ops"][0]["name"] == "aten::linear"


def test_collective_nested_in_a_wrapper_op_is_communication():
    # DeepSpeed AutoTP's row-parallel layers run their all-reduce inside an autograd op
    # named RowParallel: on the CPU the nested collective is communication, the rest of
    # the wrapper its own category (elementwise), a nested addmm in a linear still matmul
    trace = {
        "traceEvents": [
            ev("user_annotation", "step 0 decode bs1-q1-blk1 eager", 0, 100),
            ev("cpu_op", "aten::linear", 10, 30),
            ev("cpu_op", "aten::addmm", 12, 26),
            ev("cpu_op", "RowParallel", 40, 40),
            ev("cpu_op", "deepspeed::inference_all_reduce_", 45, 30),
        ]
    }
    (step,) = analyze(trace)["steps"]
    shares_us = {k: round(v * 1e3, 6) for k, v in step["shares_ms"].items()}
    assert shares_us == {
        "matmul": 30,
        "attention": 0,
        "elementwise": 10,
        "communication": 30,
        "host": 30,
        "idle": 0,
    }


@pytest.mark.parametrize(
    ("name", "module", "category"),
    [
        ("aten::linear", "model.layers.0.self_attn.q_proj", "matmul"),
        ("aten::mm", None, "matmul"),
        ("ampere_sgemm_128x64_tn", None, "matmul"),
        ("aten::mul", "model.layers.0.self_attn", "attention"),
        ("aten::softmax", "model.layers.0.attn", "attention"),
        ("aten::scaled_dot_product_attention", None, "attention"),
        ("aten::softmax", None, "elementwise"),
        ("aten::rms_norm", "model.layers.0.input_layernorm", "elementwise"),
        ("aten::broadcast_tensors", None, "elementwise"),
        ("c10d::allreduce_", None, "communication"),
        ("ncclDevKernel_AllReduce_Sum_f32", None, "communication"),
    ],
)
def test_classify(name, module, category):
    assert classify(name, module) == category
