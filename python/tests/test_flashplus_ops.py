"""flashplus.ops and flashplus._core on NumPy arrays and torch CPU tensors, against a float64
NumPy reference, with FlashAttention's tolerance rule: our error must be at most twice the
error of the same math done naively in the input dtype (plus a small floor)."""
import numpy as np
import pytest

import flashplus
from flashplus import ops, _core

torch = pytest.importorskip("torch")


def reference(q, k, v, causal=False, window=(-1, -1), softcap=0.0, scale=None):
    """fp64 attention with bottom-right-aligned masks; returns (out, lse), lse +inf when empty."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    b, sq, h, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    k = np.repeat(k, h // hk, axis=2)
    v = np.repeat(v, h // hk, axis=2)
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    s = np.einsum("bihd,bjhd->bhij", q, k) * scale
    if softcap > 0:
        s = softcap * np.tanh(s / softcap)
    i = np.arange(sq)[:, None] + sk - sq
    j = np.arange(sk)[None, :]
    wl, wr = window
    if causal:
        wr = 0
    visible = np.ones((sq, sk), dtype=bool)
    if wl >= 0:
        visible &= j >= i - wl
    if wr >= 0:
        visible &= j <= i + wr
    s = np.where(visible, s, -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m)
    l = p.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.einsum("bhij,bjhd->bihd", np.where(l > 0, p / l, 0.0), v)
        lse = np.where(l[..., 0] > 0, np.log(l[..., 0]) + m[..., 0], np.inf)
    return out, lse


def naive_torch(q, k, v, causal=False):
    """The same math in the input dtype (the tolerance's yardstick)."""
    h, hk = q.shape[2], k.shape[2]
    k = k.repeat_interleave(h // hk, dim=2)
    v = v.repeat_interleave(h // hk, dim=2)
    s = torch.einsum("bihd,bjhd->bhij", q, k) / q.shape[-1] ** 0.5
    sq, sk = q.shape[1], k.shape[1]
    if causal:
        i = torch.arange(sq)[:, None] + sk - sq
        j = torch.arange(sk)[None, :]
        s = s.masked_fill(j > i, float("-inf"))
    p = torch.softmax(s.float(), dim=-1).to(q.dtype)
    p = torch.nan_to_num(p)
    return torch.einsum("bhij,bjhd->bihd", p, v)


SHAPES = [(1, 1, 1, 1, 1, 8), (2, 37, 53, 4, 2, 40), (1, 113, 203, 3, 1, 59), (2, 65, 17, 2, 2, 64)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
def test_numpy_fp32(shape, causal):
    b, sq, sk, h, hk, d = shape
    rng = np.random.default_rng(sum(shape) + causal)
    q = rng.standard_normal((b, sq, h, d), dtype=np.float32)
    k = rng.standard_normal((b, sk, hk, d), dtype=np.float32)
    v = rng.standard_normal((b, sk, hk, d), dtype=np.float32)
    out, lse = ops.fwd(q, k, v, causal=causal)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and lse.shape == (b, h, sq)
    ref, ref_lse = reference(q, k, v, causal=causal)
    assert np.max(np.abs(out - ref)) < 1e-5
    finite = np.isfinite(ref_lse)
    assert np.array_equal(np.isinf(lse), ~finite)
    assert np.max(np.abs(lse[finite] - ref_lse[finite]), initial=0) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_torch_low_precision_tolerance(dtype, causal):
    b, sq, sk, h, hk, d = 2, 37, 53, 4, 2, 40
    g = torch.Generator().manual_seed(7)
    q = torch.randn(b, sq, h, d, generator=g).to(dtype)
    k = torch.randn(b, sk, hk, d, generator=g).to(dtype)
    v = torch.randn(b, sk, hk, d, generator=g).to(dtype)
    out, lse = ops.fwd(q, k, v, causal=causal)
    assert out.dtype == dtype and lse.dtype == torch.float32
    ref, _ = reference(q.float().numpy(), k.float().numpy(), v.float().numpy(), causal=causal)
    ours = np.abs(out.float().numpy() - ref).max()
    naive = np.abs(naive_torch(q, k, v, causal).float().numpy() - ref).max()
    assert ours <= 2 * naive + 1e-5, (ours, naive)


def test_torch_strided_views_and_backward():
    """q/k/v as views into one packed qkv tensor; the backward against torch autograd in fp64."""
    b, s, h, d = 2, 29, 3, 24
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(b, s, 3, h, d, generator=g)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    out, lse = ops.fwd(q, k, v, causal=True)
    dout = torch.randn(b, s, h, d, generator=g)
    dq, dk, dv = ops.bwd(dout, q, k, v, out, lse, causal=True)
    q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
    sc = torch.einsum("bihd,bjhd->bhij", q64, k64) / d ** 0.5
    mask = torch.ones(s, s, dtype=torch.bool).tril()
    p = torch.softmax(sc.masked_fill(~mask, float("-inf")), -1)
    o64 = torch.einsum("bhij,bjhd->bihd", p, v64)
    o64.backward(dout.double())
    assert (out.double() - o64).abs().max() < 1e-5
    for ours, ref in ((dq, q64.grad), (dk, k64.grad), (dv, v64.grad)):
        assert (ours.double() - ref).abs().max() < 1e-4


def test_varlen_and_kvcache_numpy():
    rng = np.random.default_rng(11)
    lens_q, lens_k, h, d = [3, 0, 17], [5, 4, 17], 2, 16
    cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    q = rng.standard_normal((cu_q[-1], h, d), dtype=np.float32)
    k = rng.standard_normal((cu_k[-1], h, d), dtype=np.float32)
    v = rng.standard_normal((cu_k[-1], h, d), dtype=np.float32)
    out, lse = ops.varlen_fwd(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=True)
    for bi in range(3):
        qs, ks = slice(cu_q[bi], cu_q[bi + 1]), slice(cu_k[bi], cu_k[bi + 1])
        if lens_q[bi] == 0:
            continue
        ref, ref_lse = reference(q[None, qs], k[None, ks], v[None, ks], causal=True)
        assert np.abs(out[qs] - ref[0]).max() < 1e-5
        assert np.abs(lse[:, qs] - ref_lse[0]).max() < 1e-5
    # kv cache: a paged cache of page size 3, 2 sequences, one new token appended each.
    b, page, nblk = 2, 3, 8
    kc = rng.standard_normal((nblk, page, h, d), dtype=np.float32)
    vc = rng.standard_normal((nblk, page, h, d), dtype=np.float32)
    table = np.array([[5, 2, 7, 0], [1, 3, 4, 6]], dtype=np.int32)
    seqlens = np.array([7, 10], dtype=np.int32)
    qn = rng.standard_normal((b, 1, h, d), dtype=np.float32)
    kn = rng.standard_normal((b, 1, h, d), dtype=np.float32)
    vn = rng.standard_normal((b, 1, h, d), dtype=np.float32)
    out, lse = ops.fwd_kvcache(qn, kc, vc, kn, vn, cache_seqlens=seqlens, block_table=table,
                               causal=True)
    for bi in range(b):
        n = seqlens[bi] + 1
        pos = np.arange(n)
        keys = kc[table[bi, pos // page], pos % page]
        vals = vc[table[bi, pos // page], pos % page]
        assert np.array_equal(keys[-1], kn[bi, 0]) and np.array_equal(vals[-1], vn[bi, 0])
        ref, _ = reference(qn[bi:bi + 1], keys[None], vals[None], causal=True)
        assert np.abs(out[bi] - ref[0]).max() < 1e-5


def test_errors_name_the_argument():
    q = np.random.rand(1, 4, 2, 8).astype(np.float32)
    with pytest.raises(flashplus.FlashPlusError, match="k") as e:
        ops.fwd(q, q[:, :, :, :4].copy(), q)
    assert e.value.status == "invalid_args"
    with pytest.raises(TypeError, match="q must be a torch.Tensor or an array"):
        _core.mha_fwd([1], q, q, q, q, None, None, 0.0, 0.0, False, -1, -1, 0.0, False,
                      0, 0, 0, 0, 0)
    with pytest.raises(TypeError, match="takes 19 positional"):
        _core.mha_fwd(q, q, q)
    with pytest.raises(flashplus.FlashPlusError, match="q has dtype float64"):
        t = torch.zeros(1, 4, 2, 8, dtype=torch.float64) + 1
        ops.fwd(t, t, t)
    with pytest.raises(ValueError, match="backend"):
        ops.fwd(q, q, q, backend="tpu")


def test_info():
    i = flashplus.info()
    assert i["c_abi_version"] == _core.ABI_VERSION == 1
    assert i["backends"]["cpu"]["compiled"] and i["backends"]["cpu"]["devices"] >= 1
