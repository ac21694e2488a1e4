# Bad input (API.md §4, issue 12 item 5): upstream's exception type and a message that names the
# argument; never a crash.
import pytest
import torch

import flash_attn.flash_attn_interface as fai
from flash_attn import (flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache)
from flash_attn.flash_attn_interface import _flash_attn_backward, _flash_attn_forward

bf16 = torch.bfloat16


def qkv(B=2, sq=9, sk=11, H=4, hk=2, d=32, dtype=bf16):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(B, sq, H, d, generator=g).to(dtype),
            torch.randn(B, sk, hk, d, generator=g).to(dtype),
            torch.randn(B, sk, hk, d, generator=g).to(dtype))


def test_unsupported_dtype():
    q, k, v = qkv(dtype=torch.float64)
    with pytest.raises(RuntimeError, match="FlashAttention only support fp16 and bf16"):
        flash_attn_func(q, k, v)


def test_mixed_dtypes():
    q, k, v = qkv()
    with pytest.raises(RuntimeError, match="query and key must have the same dtype"):
        flash_attn_func(q, k.half(), v)
    with pytest.raises(RuntimeError, match="query and value must have the same dtype"):
        flash_attn_func(q, k, v.half())


def test_fp32_is_accepted_not_downcast():
    q, k, v = qkv(dtype=torch.float32)
    assert flash_attn_func(q, k, v).dtype == torch.float32


def test_head_dim_limit():
    q, k, v = qkv(d=264)
    with pytest.raises(RuntimeError, match="head dimension at most 256"):
        flash_attn_func(q, k, v)
    q, k, v = qkv(d=256)
    assert flash_attn_func(q, k, v).shape[-1] == 256


def test_any_head_dim_in_raw_ops():
    # Documented superset: the raw ops take any D <= 256 (upstream: multiples of 8 only).
    q, k, v = qkv(d=13)
    out, lse, _, _ = _flash_attn_forward(q, k, v, 0.0, 13 ** -0.5, False, -1, -1, 0.0, None,
                                         False)
    assert out.shape[-1] == 13


def test_heads_not_divisible():
    q, k, v = qkv(H=4, hk=3)
    with pytest.raises(RuntimeError, match="Number of heads in key/value must divide"):
        flash_attn_func(q, k, v)


def test_shape_mismatch_names_argument():
    q, k, v = qkv()
    with pytest.raises(RuntimeError, match=r"\bv\b"):
        flash_attn_func(q, k, v[:, :5])
    with pytest.raises(RuntimeError, match=r"\bk\b"):
        flash_attn_func(q, k[..., :16], v)
    with pytest.raises(RuntimeError, match=r"\bq\b.*dimensions"):
        flash_attn_func(q[0], k, v)


def test_batch_zero():
    q, k, v = qkv(B=0)
    with pytest.raises(RuntimeError, match="batch size must be positive"):
        flash_attn_func(q, k, v)


def test_dropout_out_of_range_and_softcap_dropout():
    q, k, v = qkv()
    with pytest.raises(RuntimeError):
        flash_attn_func(q, k, v, dropout_p=1.0)
    with pytest.raises(RuntimeError, match="Softcapping does not support dropout for now"):
        flash_attn_func(q, k, v, dropout_p=0.1, softcap=5.0)


def test_return_softmax_without_dropout_raw():
    q, k, v = qkv()
    with pytest.raises(RuntimeError, match="return_softmax is only supported when p_dropout > 0"):
        _flash_attn_forward(q, k, v, 0.0, 0.1, False, -1, -1, 0.0, None, True)


def test_alibi_dtype_and_shape():
    q, k, v = qkv()
    with pytest.raises(RuntimeError, match="ALiBi slopes must have dtype fp32"):
        flash_attn_func(q, k, v, alibi_slopes=torch.rand(4).half())
    with pytest.raises(RuntimeError, match="alibi_slopes"):
        flash_attn_func(q, k, v, alibi_slopes=torch.rand(3))


def test_cu_seqlens_dtype():
    q, k, v = qkv(B=1)
    cu64 = torch.tensor([0, 9], dtype=torch.int64)
    cu32 = torch.tensor([0, 11], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="cu_seqlens_q must have dtype int32"):
        flash_attn_varlen_func(q[0], k[0], v[0], cu64, cu32, 9, 11)
    with pytest.raises(RuntimeError, match="cu_seqlens_k must have dtype int32"):
        flash_attn_varlen_func(q[0], k[0], v[0], cu32[:1].new_tensor([0, 9]), cu64 + 2, 9, 11)


def test_block_table_dtype():
    q, k, v = qkv(B=1)
    cache = torch.zeros(2, 16, 2, 32, dtype=bf16)
    with pytest.raises(RuntimeError, match="block_table must have dtype"):
        flash_attn_with_kvcache(q, cache, cache, cache_seqlens=3,
                                block_table=torch.tensor([[0, 1]], dtype=torch.int64))


def test_backward_with_dropout_needs_rng_state():
    q, k, v = qkv()
    out, lse, _, rng = _flash_attn_forward(q, k, v, 0.1, 0.2, False, -1, -1, 0.0, None, False)
    with pytest.raises(RuntimeError, match="rng_state"):
        _flash_attn_backward(out, q, k, v, out, lse, torch.empty_like(q), torch.empty_like(k),
                             torch.empty_like(v), 0.1, 0.2, False, -1, -1, 0.0, None, False,
                             None)


class TestKvcache:
    def setup_method(self):
        g = torch.Generator().manual_seed(1)
        self.q = torch.randn(2, 1, 4, 32, generator=g).to(bf16)
        self.kc = torch.randn(2, 20, 2, 32, generator=g).to(bf16)
        self.vc = torch.randn(2, 20, 2, 32, generator=g).to(bf16)
        self.kn = torch.randn(2, 1, 2, 32, generator=g).to(bf16)
        self.sl = torch.tensor([3, 5], dtype=torch.int32)

    def test_cache_last_dim_not_contiguous_is_assertion(self):
        kc = torch.randn(2, 20, 2, 64).to(bf16)[..., ::2]
        with pytest.raises(AssertionError, match="k_cache must have contiguous last dimension"):
            flash_attn_with_kvcache(self.q, kc, self.vc)
        with pytest.raises(AssertionError, match="v_cache must have contiguous last dimension"):
            flash_attn_with_kvcache(self.q, self.kc, kc)

    def test_k_without_v_or_seqlens(self):
        with pytest.raises(RuntimeError, match="If key is supplied, value must also be passed in"):
            flash_attn_with_kvcache(self.q, self.kc, self.vc, k=self.kn, cache_seqlens=self.sl)
        with pytest.raises(RuntimeError, match="seqlens_k must also be passed in"):
            flash_attn_with_kvcache(self.q, self.kc, self.vc, k=self.kn, v=self.kn)

    def test_v_without_k_is_ignored(self):
        a = flash_attn_with_kvcache(self.q, self.kc, self.vc, v=self.kn, cache_seqlens=self.sl)
        b = flash_attn_with_kvcache(self.q, self.kc, self.vc, cache_seqlens=self.sl)
        assert torch.equal(a, b)

    def test_cache_seqlens_dtype(self):
        with pytest.raises(RuntimeError, match="cache_seqlens must have dtype int32"):
            flash_attn_with_kvcache(self.q, self.kc, self.vc, cache_seqlens=self.sl.long())

    def test_rotary_errors(self):
        cos = torch.ones(20, 8, dtype=bf16)
        with pytest.raises(RuntimeError, match="rotary sin must also be provided"):
            flash_attn_with_kvcache(self.q, self.kc, self.vc, self.kn, self.kn, rotary_cos=cos,
                                    cache_seqlens=self.sl)
        with pytest.raises(RuntimeError, match="rotary_cos must have the same dtype as query"):
            flash_attn_with_kvcache(self.q, self.kc, self.vc, self.kn, self.kn,
                                    rotary_cos=cos.float(), rotary_sin=cos.float(),
                                    cache_seqlens=self.sl)
        with pytest.raises(RuntimeError, match="new key / value to be appended"):
            flash_attn_with_kvcache(self.q, self.kc, self.vc, rotary_cos=cos, rotary_sin=cos,
                                    cache_seqlens=self.sl)

    def test_paged_with_cache_batch_idx_or_leftpad(self):
        kc = torch.zeros(4, 16, 2, 32, dtype=bf16)
        bt = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
        idx = torch.tensor([0, 1], dtype=torch.int32)
        with pytest.raises(RuntimeError, match="Paged KVcache does not support cache_batch_idx"):
            flash_attn_with_kvcache(self.q, kc, kc, cache_seqlens=self.sl, block_table=bt,
                                    cache_batch_idx=idx)
        with pytest.raises(RuntimeError, match="Paged KV and leftpad_k"):
            flash_attn_with_kvcache(self.q, kc, kc, cache_seqlens=self.sl, block_table=bt,
                                    cache_leftpad=idx)

    def test_num_splits_limit(self):
        with pytest.raises(RuntimeError, match="num_splits"):
            flash_attn_with_kvcache(self.q, self.kc, self.vc, cache_seqlens=self.sl,
                                    num_splits=129)


class _FakeCudaTensor:
    is_cuda = True
    device = torch.device("cuda", 0)

    def get_device(self):
        return 0


def test_cuda_without_cuda_backend_says_how_to_build(monkeypatch):
    monkeypatch.setattr(fai, "_HAS_CUDA_BACKEND", False)
    with pytest.raises(RuntimeError) as e:
        fai._opts(_FakeCudaTensor())
    msg = str(e.value)
    assert "without its CUDA backend" in msg and "pip install ./python/flashplus" in msg
    assert "FLASHPLUS_CUDA=ON" in msg and "nvcc" in msg


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_real():
    q, k, v = [t.cuda() for t in qkv()]
    if fai._HAS_CUDA_BACKEND:
        out = flash_attn_func(q, k, v, causal=True)
        ref = flash_attn_func(*[t.cpu() for t in (q, k, v)], causal=True)
        torch.testing.assert_close(out.cpu(), ref, rtol=2e-2, atol=2e-2)
    else:
        with pytest.raises(RuntimeError, match="without its CUDA backend"):
            flash_attn_func(q, k, v)
