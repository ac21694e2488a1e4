"""Per-call host cost of the Python layers over the C ABI, on a decode step small enough that the
host is the bottleneck (the same problem as c_call_overhead.c): N calls enqueued back to back,
one synchronize, best of 5. Prints JSON lines: flashplus._core (the extension alone) and
flash_attn.flash_attn_with_kvcache (the drop-in: argument checks, allocation, stream lookup)."""
import json
import sys
import time

import torch

import flash_attn
from flashplus import _core

calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
dev = "cuda"
q = torch.full((1, 1, 8, 128), 1.06, dtype=torch.float16, device=dev)
kc = torch.randn(1, 256, 8, 128, dtype=torch.float16, device=dev)
vc = torch.randn(1, 256, 8, 128, dtype=torch.float16, device=dev)
out = torch.empty_like(q)
lse = torch.empty(1, 8, 1, dtype=torch.float32, device=dev)
sl = torch.tensor([200], dtype=torch.int32, device=dev)
stream = torch.cuda.current_stream().cuda_stream


def raw():
    _core.mha_fwd_kvcache(q, kc, vc, None, None, sl, None, None, None, None, None, None, out, lse,
                          0.0, True, -1, -1, 0.0, True, 1, 0, 0, stream)


def public():
    flash_attn.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=sl, causal=True, num_splits=1)


def bench(fn):
    for _ in range(200):
        fn()
    torch.cuda.synchronize()
    best = 1e30
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best


for name, fn in (("flashplus._core.mha_fwd_kvcache", raw),
                 ("flash_attn.flash_attn_with_kvcache", public)):
    print(json.dumps({"what": name, "calls": calls, "us_per_call_min_of_5": round(bench(fn), 3)}))
