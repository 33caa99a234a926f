"""Numerics of the fused embedding: half-precision sources projected in fp32, extreme mixing logits,
and float64 gradient checks of the mixture.

Extends tests/test_modeling.py (bf16/autocast forward, fp16 storage with 3e4 values).
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call
from transformers import BertModel

import hf_embfuse
from hf_embfuse import SourceSpec
from tests.fixtures_models import HIDDEN, VOCAB, tiny_base, tiny_config, tiny_fused

pytestmark = pytest.mark.timeout(120)

FP16_MAX = torch.finfo(torch.float16).max  # 65504


@pytest.mark.parametrize("source_dtype", ["float16", "bfloat16"])
def test_half_precision_sources_are_projected_in_fp32(tmp_path, source_dtype):
    """Values near the fp16 limit, a map whose products overflow fp16 (and lose bf16's 8 bits): the fused
    vectors equal the float64 product of the stored half-precision table, before and after save/load."""
    dtype = getattr(torch, source_dtype)
    generator = torch.Generator().manual_seed(0)
    table = 6.0e4 * (0.9 + 0.1 * torch.rand(VOCAB, 16, generator=generator))  # 54,000..60,000
    weight = torch.ones(HIDDEN, 16) + 0.01 * torch.randn(HIDDEN, 16, generator=generator)
    spec = SourceSpec(
        table=table,
        projection="linear",
        projection_weight=weight,
        coverage=torch.ones(VOCAB, dtype=torch.bool),
    )
    fused = hf_embfuse.from_base(
        tiny_base("bert"), [spec], mixing="fixed", fixed_weights=[0.0, 1.0], source_dtype=source_dtype
    ).eval()
    embedding = fused.get_input_embeddings()
    assert embedding.source_tables[0].dtype == dtype
    stored = embedding.source_tables[0].detach().double()
    expected = stored @ weight.double().T  # about 1e6 per value: beyond fp16, and bf16 would round it
    assert expected.abs().max() > 10 * FP16_MAX

    ids = torch.arange(1, VOCAB)  # row 0 is the padding row, the base's own
    fused.save_pretrained(tmp_path)
    loaded = hf_embfuse.EmbFuseModel.from_pretrained(tmp_path).eval()
    assert loaded.get_input_embeddings().source_tables[0].dtype == dtype
    for model in (fused, loaded):
        with torch.no_grad():
            out = model.get_input_embeddings()(ids[None])[0].double()
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, expected[ids], rtol=1e-6, atol=0)  # fp32 accumulation
    # The half-precision product would not do: fp16 overflows, bf16 is off by far more than fp32 rounding.
    half = (stored[ids].to(dtype) @ weight.to(dtype).T).double()
    assert (
        not torch.isfinite(half).all()
        or (half - expected[ids]).abs().max() > 1e3 * (out - expected[ids]).abs().max()
    )


EXTREME = [1e4, 1e30, 3e38]


@pytest.mark.parametrize("mixing", ["learned", "gated"])
@pytest.mark.parametrize("magnitude", EXTREME)
@pytest.mark.parametrize("temperature", [1.0, 1e-3])
def test_extreme_mixing_logits_give_no_nan(mixing, magnitude, temperature):
    fused = tiny_fused("bert", mixing=mixing, mixing_temperature=temperature)
    embedding = fused.get_input_embeddings()
    with torch.no_grad():
        embedding.mixer.logits.copy_(torch.tensor([magnitude, -magnitude, magnitude]))
        if embedding.mixer.gate is not None:
            embedding.mixer.gate.normal_(std=1e3)
        # Rows covered by every source, by the base only, and by the base and the -magnitude source only.
        embedding.coverage[5] = True
        embedding.coverage[6, 1:] = False
        embedding.coverage[7] = torch.tensor([True, True, False])
        weights = embedding.mix(torch.arange(VOCAB))[1]
        fused_table = embedding.fused_weight()
    assert torch.isfinite(weights).all() and torch.isfinite(fused_table).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(VOCAB))
    assert (weights[~embedding.coverage] == 0).all()
    assert weights[6, 0] == 1
    ids = torch.tensor([[5, 6, 7, 8]])
    out = fused(input_ids=ids).last_hidden_state
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(embedding.mixer.logits.grad).all()


class _VectorsAndRegularization(torch.nn.Module):
    """The fused vectors and Ω of the same ids, as one module for `functional_call`."""

    def __init__(self, embedding: torch.nn.Module) -> None:
        super().__init__()
        self.embedding = embedding

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.embedding(ids), self.embedding.regularization(ids)


@pytest.mark.parametrize("mixing", ["learned", "gated"])
@pytest.mark.parametrize("regularizer", ["none", "entropy", "anchor"])
def test_gradcheck_of_the_mixture_in_float64(mixing, regularizer):
    """Analytic gradients of the fused vectors (and the regulariser) w.r.t. every mixing input match finite
    differences, with the module in float64: base table, source tables, projections, logits, gate."""
    torch.manual_seed(0)
    # A small vocabulary and width keep the finite-difference Jacobian small (inputs x outputs).
    rows, width = 12, 8
    config = tiny_config("bert", vocab_size=rows)
    config.hidden_size, config.intermediate_size = width, 2 * width
    base = BertModel(config).eval()
    sources = [
        SourceSpec(table=torch.randn(rows, 2), coverage=torch.rand(rows) > 0.3),
        SourceSpec(table=torch.randn(rows, width), projection="identity", coverage=torch.rand(rows) > 0.3),
    ]
    model = hf_embfuse.from_base(base, sources, mixing=mixing, regularizer=regularizer)
    embedding = model.get_input_embeddings().double()
    with torch.no_grad():
        embedding.mixer.logits.normal_()
        if embedding.mixer.gate is not None:
            embedding.mixer.gate.normal_(std=0.3)
        embedding.projections[0].weight.normal_()
    ids = torch.tensor([[1, 4, 9, 9, 3, 11]])
    both = _VectorsAndRegularization(embedding)
    names = [name for name, p in both.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in both.parameters())
    assert all(p.dtype == torch.float64 for p in params)

    def fused(*values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out, regularization = functional_call(both, dict(zip(names, values, strict=True)), (ids,))
        assert out.dtype == torch.float64
        assert (regularization is None) == (regularizer == "none")
        return (out,) if regularization is None else (out, regularization)

    assert torch.autograd.gradcheck(fused, params, eps=1e-6, atol=1e-5, rtol=1e-4)
