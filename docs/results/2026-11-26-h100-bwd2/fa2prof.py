# FA2 (PyTorch SDPA flash backend) backward kernels, for ncu: a few backward calls per shape.
import sys, torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
for spec in sys.argv[1:]:
    d, s, c = (int(x) for x in spec.split(","))
    b, h = 16384 // s, 2048 // d
    q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        o = F.scaled_dot_product_attention(q, k, v, is_causal=bool(c))
    g = torch.randn_like(o)
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_push(f"bwd d{d} s{s} c{c}")
    for _ in range(2):
        torch.autograd.grad(o, (q, k, v), g, retain_graph=True)
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_pop()
    print("done", spec, flush=True)
