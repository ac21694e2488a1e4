"""flashplus.ops on CUDA tensors against torch's SDPA in fp32 (a first look on the device)."""
import torch
import torch.nn.functional as F

import flashplus
from flashplus import ops

print(flashplus.info())
torch.manual_seed(0)
for dtype in (torch.float16, torch.bfloat16):
    for (b, sq, sk, h, hk, d, causal) in [(2, 128, 128, 8, 8, 64, True), (3, 113, 203, 6, 2, 128, False),
                                          (1, 1, 999, 8, 1, 128, True), (2, 77, 77, 4, 4, 256, True)]:
        q = torch.randn(b, sq, h, d, device="cuda", dtype=dtype)
        k = torch.randn(b, sk, hk, d, device="cuda", dtype=dtype)
        v = torch.randn(b, sk, hk, d, device="cuda", dtype=dtype)
        out, lse = ops.fwd(q, k, v, causal=causal)
        rep = h // hk
        kk, vv = (x.repeat_interleave(rep, 2).transpose(1, 2).float() for x in (k, v))
        mask = None
        if causal:
            i = torch.arange(sq, device="cuda")[:, None] + sk - sq
            mask = torch.arange(sk, device="cuda")[None, :] <= i
        ref = F.scaled_dot_product_attention(q.transpose(1, 2).float(), kk, vv, attn_mask=mask)
        naive = F.scaled_dot_product_attention(q.transpose(1, 2), kk.to(dtype), vv.to(dtype), attn_mask=mask)
        e = (out.transpose(1, 2).float() - ref).abs().max().item()
        en = (naive.float() - ref).abs().max().item()
        dout = torch.randn_like(out)
        dq, dk, dv = ops.bwd(dout, q, k, v, out, lse, causal=causal)
        print(f"{str(dtype):15} b{b} sq{sq} sk{sk} h{h}/{hk} d{d} causal={causal}: err {e:.2e} "
              f"sdpa-in-dtype {en:.2e} {'OK' if e <= 2 * en + 1e-5 else 'FAIL'}; "
              f"dq finite {bool(torch.isfinite(dq).all())}")
