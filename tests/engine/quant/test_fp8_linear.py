"""FP8 weights on NVIDIA (engine.quant.fp8_linear): per-channel weight scales, per-token
activation scales, torch._scaled_mm. The numerics are checked against a dequantized float32
reference; torch 2.13's CPU build runs _scaled_mm too, so the same checks run here, and the
`cuda` tests (pytest -m cuda) repeat them on the GPU and serve a model end to end."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.quant.fp8_linear import FP8_MAX, Fp8Linear, quantize_fp8_scaled, quantize_rowwise


def reference(layer: Fp8Linear, x: torch.Tensor) -> torch.Tensor:
    """The same quantized operands, dequantized and multiplied in float32."""
    rows = x.reshape(-1, layer.in_features).float()
    q, scale = quantize_rowwise(rows)
    weight = layer.weight.float() * layer.weight_scale.reshape(-1, 1)
    out = (q.float() * scale) @ weight.t()
    if layer.bias is not None:
        out = out + layer.bias.float()
    return out.reshape(*x.shape[:-1], layer.out_features)


def check_against_reference(device: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(128, 48, bias=True).to(device, dtype)
    layer = Fp8Linear.from_linear(linear)
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.shape == (1, 48)
    x = torch.randn(2, 5, 128, device=device, dtype=dtype)
    out = layer(x)
    assert out.shape == (2, 5, 48) and out.dtype == dtype
    ref = reference(layer, x)
    # bfloat16 output of the matmul: about 3 significant digits
    assert torch.allclose(out.float(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())
    # and close to the unquantized layer (e4m3: 3 mantissa bits on both operands)
    exact = linear(x).float()
    error = ((out.float() - exact).norm() / exact.norm()).item()
    assert error < 0.08, error


def test_weight_scales_map_each_row_to_the_fp8_range():
    weight = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [448.0, 1.0, -896.0]])
    q, scale = quantize_rowwise(weight)
    assert torch.equal(q.float().abs().amax(dim=1), torch.tensor([FP8_MAX, 0.0, FP8_MAX]))
    assert torch.allclose(scale.squeeze(1), torch.tensor([2 / FP8_MAX, 1e-12 / FP8_MAX, 2.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_matches_the_dequantized_reference_on_cpu(dtype):
    check_against_reference("cpu", dtype)


def test_quantize_skips_the_lm_head_and_unaligned_layers():
    model = nn.ModuleDict(
        {"q_proj": nn.Linear(64, 32), "odd": nn.Linear(64, 30), "lm_head": nn.Linear(64, 96)}
    )
    quantize_fp8_scaled(model, skip=("lm_head",))
    assert isinstance(model["q_proj"], Fp8Linear)
    assert type(model["odd"]) is nn.Linear and type(model["lm_head"]) is nn.Linear


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp8_linear_matches_the_dequantized_reference_on_cuda(dtype):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("rowwise-scaled FP8 matmuls need compute capability >= 8.9")
    check_against_reference("cuda", dtype)


@pytest.mark.cuda
def test_fp8_weights_serve_end_to_end_on_cuda(tiny_model_dir, make_llm):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("rowwise-scaled FP8 matmuls need compute capability >= 8.9")
    from engine import SamplingParams
    from tests.conftest import random_prompts

    model_dir = tiny_model_dir("llama")
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    prompts = random_prompts([5, 23, 41], seed=3)
    args = dict(skip_tokenizer_init=True, device="cuda", dtype="bfloat16", enable_graphs=False)
    plain = [o.token_ids for o in make_llm(model_dir, **args).generate(prompts, params)]
    llm = make_llm(model_dir, quantization="fp8", **args)
    model = llm.engine.executor.runner.model
    assert isinstance(model.model.layers[0].self_attn.q_proj, Fp8Linear)
    assert type(model.lm_head) is nn.Linear  # the lm_head stays in bfloat16
    outs = [o.token_ids for o in llm.generate(prompts, params)]
    assert outs == [o.token_ids for o in llm.generate(prompts, params)]  # deterministic
    same = sum(a == b for p, o in zip(plain, outs, strict=True) for a, b in zip(p, o, strict=True))
    print(f"fp8 greedy agreement {same / sum(map(len, plain)):.1%}")
    assert all(len(t) == 16 for t in outs)
