"""Mixtral's mixture-of-experts layer with static shapes (the `mixtral` family's
`patch_model`).

transformers' MixtralSparseMoeBlock routes each token to its top-k experts (softmax over
the router logits in fp32, top-k, the k weights renormalised to sum to 1; the router's
jitter noise applies only in training) and then runs each expert on the tokens routed to
it: `nonzero` over the expert mask and per-expert index lists (eager), or a sort with
per-expert offsets (grouped_mm). Both have shapes that depend on the routing, which on
a Gaudi means a host sync and a graph per distinct split. StaticMoeBlock keeps the router
and the parameters (same names and shapes: `mlp.gate.weight`, `mlp.experts.gate_up_proj`,
`mlp.experts.down_proj`, so checkpoints load unchanged) and computes every expert densely
for every token, combining them with a [tokens, experts] matrix of routing weights that is
zero where a token is not routed; a step with fewer routed slots than experts (tokens x k
< E) instead multiplies each slot by its expert's weights gathered by index. Which path
runs depends on the step's shape alone. A token's output adds exactly the same k products
as transformers' (adding zeros is exact), so greedy fp32 output is token-identical.

Dense versus a fixed-shape dispatch, measured on the CPU (fp32, 1 thread, hidden 512,
intermediate 1792, 8 experts, top-2: Mixtral-8x7B's ratios scaled down), ms per call, best
of 9, on the shared 2-core development machine under load (load average ~7: +-30% noise):

    .venv/bin/python -m benchmarks.moe_dispatch --tokens 1,2,4,16,128,512 --repeats 9

    tokens  hf eager  hf grouped_mm  dense (a)  padded (b)  engine
         1      0.64           0.72       5.40        1.27    1.82
         2      2.03           1.91      16.64        4.30    4.86
         4      4.55           4.64      15.31       58.04   10.67
        16     17.27          15.57      23.98      154.68   20.87
       128     40.19          38.95     113.69      206.08  114.31
       512    116.90         118.37     435.15      357.86  432.56

(a) computes all E experts for every token: E/k = 4x the FLOPs, each expert's weights read
once. (b) sorts the tokens x k assignments by expert into fixed row blocks (capacity
tokens x k, each expert's run padded to whole blocks of ceil(tokens x k / E) rows, the
block count bounded statically) and multiplies each block by its expert's weights,
gathered per block (index_select): k/E of dense's FLOPs plus padding, but up to
min(tokens x k, tokens x k / block + E) expert matrices copied per call, and that copy is
77% of (b)'s time at 16 tokens. Chosen: (a), except while tokens x k < E (decode of one
to three sequences for Mixtral), where (b) degenerates to one row per block (`gathered`:
only the k routed experts' weights are read, 1.3 vs 5.4 ms at one token). From 4 tokens
up (b) loses to (a) up to 128 tokens and gains 18% at 512 (where prefill runs compute-
bound on either); dense keeps the weights in place (no per-step copy of expert matrices,
which on a Gaudi is HBM traffic as well) and its shapes are one matmul pair per expert.
The engine's column is the chosen mix (the same code as (a) from 4 tokens up: the
differences there are noise). transformers' data-dependent blocks are faster on the CPU
(only routed tokens computed), and are what the static shapes pay for.

Tensor parallelism (sharding.autotp): each expert's FFN is split over the intermediate
dimension like a dense MLP's (gate and up rows column-parallel, down columns
row-parallel; `tp_splits`), the router is replicated, and one all-reduce follows the
combine of all experts (`tp_all_reduce`), instead of one per expert.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["StaticMoeBlock", "StaticMoeExperts", "patch_model", "routing_matrix"]


def routing_matrix(top_k_index: torch.Tensor, top_k_weights: torch.Tensor, num_experts: int):
    """[tokens, k] expert ids and weights -> [tokens, num_experts] weights, zero for the
    experts a token is not routed to. A comparison with every expert id: no one_hot (whose
    range check reads the ids on the host) and no scatter."""
    experts = torch.arange(num_experts, device=top_k_index.device)
    chosen = top_k_index.unsqueeze(-1) == experts  # [tokens, k, experts]
    return (chosen * top_k_weights.unsqueeze(-1)).sum(dim=1)


class StaticMoeExperts(nn.Module):
    """The experts, with shapes fixed by the token count alone.

    gate_up_proj: [experts, 2 x intermediate, hidden] (gate rows, then up rows);
    down_proj: [experts, hidden, intermediate], as transformers' MixtralExperts.
    tp_splits: how tensor parallelism cuts each parameter, {name: (dim, number of fused
    blocks along it)}: each rank takes its share of every block. tp_all_reduce: set by
    sharding.autotp on a sharded model, sums the partial outputs of the ranks in place.
    """

    tp_splits = {"gate_up_proj": (1, 2), "down_proj": (2, 1)}

    def __init__(self, gate_up_proj: nn.Parameter, down_proj: nn.Parameter, act_fn) -> None:
        super().__init__()
        self.gate_up_proj = gate_up_proj
        self.down_proj = down_proj
        self.act_fn = act_fn
        self.tp_all_reduce: Callable[[torch.Tensor], object] | None = None

    @property
    def num_experts(self) -> int:
        return self.gate_up_proj.shape[0]

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """hidden_states [tokens, hidden], top_k_index and top_k_weights [tokens, k] ->
        [tokens, hidden]. Fewer routed slots than experts (tokens x k < experts: decode of
        one to a few sequences): `gathered`, which reads only the routed experts' weights;
        otherwise `dense`. The choice depends on shapes only (static per bucket)."""
        num_slots = top_k_index.shape[0] * top_k_index.shape[1]
        run = self.gathered if num_slots < self.num_experts else self.dense
        out = run(hidden_states, top_k_index, top_k_weights).to(hidden_states.dtype)
        if self.tp_all_reduce is not None:
            self.tp_all_reduce(out)
        return out

    def dense(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """Every expert on every token (a fixed loop over the experts: the peak is one
        expert's [tokens, 2 x inter] activations), weighted by `routing_matrix`."""
        routing = routing_matrix(top_k_index, top_k_weights, self.num_experts)
        dtype = torch.promote_types(hidden_states.dtype, routing.dtype)
        out = torch.zeros_like(hidden_states, dtype=dtype)
        for e in range(self.num_experts):
            gate, up = F.linear(hidden_states, self.gate_up_proj[e]).chunk(2, dim=-1)
            expert_out = F.linear(self.act_fn(gate) * up, self.down_proj[e])
            out += expert_out * routing[:, e : e + 1]
        return out

    def gathered(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """Each (token, slot) pair by its expert's weights, gathered by index: [tokens x k]
        expert matrices read (copied), each token's k outputs summed in slot order."""
        num_tokens, top_k = top_k_index.shape
        ids = top_k_index.reshape(-1)  # [slots]
        x = hidden_states.unsqueeze(1).expand(-1, top_k, -1).reshape(num_tokens * top_k, -1)
        # NOTE: index_select and x @ W^T: on the CPU, W[ids] and W @ x took 10-25x longer.
        gate_up_proj = self.gate_up_proj.index_select(0, ids).transpose(1, 2)
        gate, up = torch.bmm(x.unsqueeze(1), gate_up_proj).chunk(2, dim=-1)
        down_proj = self.down_proj.index_select(0, ids).transpose(1, 2)
        out = torch.bmm(self.act_fn(gate) * up, down_proj)  # [slots, 1, hidden]
        out = out.view(num_tokens, top_k, -1) * top_k_weights.unsqueeze(-1)
        return out.sum(dim=1)


class StaticMoeBlock(nn.Module):
    """Drop-in for MixtralSparseMoeBlock (eval only): transformers' router, static experts."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.top_k = block.top_k
        self.gate = block.gate  # MixtralTopKRouter: softmax, top-k, renormalise
        experts = block.experts
        self.experts = StaticMoeExperts(experts.gate_up_proj, experts.down_proj, experts.act_fn)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len, hidden_dim = hidden_states.shape
        flat = hidden_states.reshape(-1, hidden_dim)
        _, top_k_weights, top_k_index = self.gate(flat)
        out = self.experts(flat, top_k_index, top_k_weights)
        return out.reshape(batch_size, seq_len, hidden_dim)

    def checkpoint_source(self, name: str, path: str) -> str | tuple[tuple[str, ...], ...] | None:
        """Where parameter `name` (relative to this block, at module path `path`) is stored
        in a Mixtral checkpoint, which keeps the original layout: one key (renamed), or one
        tuple of keys per expert, stacked, whose tensors are concatenated along dim 0."""
        base = f"{path.rpartition('.')[0]}.block_sparse_moe"
        experts = range(self.experts.num_experts)
        if name == "gate.weight":
            return f"{base}.gate.weight"
        if name == "experts.gate_up_proj":
            return tuple(
                (f"{base}.experts.{e}.w1.weight", f"{base}.experts.{e}.w3.weight") for e in experts
            )
        if name == "experts.down_proj":
            return tuple((f"{base}.experts.{e}.w2.weight",) for e in experts)
        return None


def patch_model(model: nn.Module) -> nn.Module:
    """Replace every MixtralSparseMoeBlock of `model` by a StaticMoeBlock sharing its
    parameters (on any device, meta included); returns the model."""
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    for path, module in list(model.named_modules()):
        if isinstance(module, MixtralSparseMoeBlock):
            parent, _, attr = path.rpartition(".")
            setattr(model.get_submodule(parent), attr, StaticMoeBlock(module))
    return model
