"""Hugging Face transformers end to end on the flash_attn drop-in (run on a CUDA machine).

Small Llama, Gemma-2 (softcap, sliding window) and Qwen2 (GQA) models are built from configs with
random weights (nothing downloaded). For each, the same weights run with
attn_implementation="flash_attention_2" (our package) and "sdpa" (PyTorch's kernels; "eager" for Gemma-2, which
has no sdpa path in transformers 5) in bf16, and
"eager" in fp32 as the reference. Upstream's rule decides: our error against the fp32 reference is at
most 2x (logits) / 3x (parameter gradients) the error of sdpa in bf16, plus a small floor. A padding
mask (varlen path) is used throughout; generate() with a cache is compared step by step.
Writes one JSON (argv[1], default transformers_e2e.json) and exits non-zero on a failed check.
"""
import json
import os
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig, Qwen2Config
from transformers.utils import is_flash_attn_2_available

# Dry runs of this script without a GPU: E2E_DEVICE=cpu E2E_IMPL=sdpa (compares sdpa with itself).
DEV = os.environ.get("E2E_DEVICE", "cuda")
OURS = os.environ.get("E2E_IMPL", "flash_attention_2")
RESULT = {"transformers": transformers.__version__, "torch": torch.__version__,
          "is_flash_attn_2_available": bool(is_flash_attn_2_available()), "models": {}}
FAILED = []


def configs():
    common = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  max_position_embeddings=1024, pad_token_id=0)
    return {
        "llama": LlamaConfig(num_attention_heads=4, num_key_value_heads=4, **common),
        "gemma2": Gemma2Config(num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                               sliding_window=24, attn_logit_softcapping=50.0,
                               final_logit_softcapping=30.0, query_pre_attn_scalar=64, **common),
        "qwen2": Qwen2Config(num_attention_heads=8, num_key_value_heads=2, **common),
    }


def build(cfg, impl, dtype, state=None):
    kw = {"attn_implementation": impl}
    try:
        m = AutoModelForCausalLM.from_config(cfg, dtype=dtype, **kw)
    except TypeError:
        m = AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype, **kw)
    if state is not None:
        m.load_state_dict(state)
    return m.to(DEV)


def run(model, ids, mask, wts):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=mask)
    logits = out.logits.float()
    loss = (logits * wts * mask[..., None]).sum()
    loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach() * mask[..., None], grads


def check(name, what, ours, naive, factor, floor):
    ok = ours <= factor * naive + floor
    if not ok:
        FAILED.append(f"{name}: {what} error {ours:.3e} > {factor} x the baseline's {naive:.3e} + {floor}")
    return ok


def compare(name, cfg, base):
    """`base`: the PyTorch implementation we are held against ("sdpa"; "eager" where the model
    has no sdpa path, as Gemma-2 in transformers 5)."""
    torch.manual_seed(0)
    ref = build(cfg, "eager", torch.float32)
    state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    lengths = [70, 45, 23]
    b, s = len(lengths), max(lengths)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, cfg.vocab_size, (b, s), generator=g).to(DEV)
    mask = torch.zeros(b, s, dtype=torch.long, device=DEV)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1  # right padding: the varlen (unpad) path in training
    ids = ids * mask
    wts = torch.randn(b, s, cfg.vocab_size, generator=g).to(DEV)
    ref_logits, ref_grads = run(ref, ids, mask, wts)
    res = {}
    for impl in (base, OURS):
        m = build(cfg, impl, torch.bfloat16, state)
        t0 = time.perf_counter()
        logits, grads = run(m, ids, mask, wts)
        if DEV == "cuda":
            torch.cuda.synchronize()
        res[impl] = {"logits": logits, "grads": grads, "s": time.perf_counter() - t0, "model": m}
    err = {impl: (r["logits"] - ref_logits).abs().max().item() for impl, r in res.items()}
    rec = {"baseline": base, "logits_err_ours": err[OURS], "logits_err_baseline": err[base]}
    rec["logits_ok"] = check(name, "logits", err[OURS], err[base], 2.0, 1e-3)
    worst = (0.0, "")
    gok = True
    for pname, gref in ref_grads.items():
        scale = gref.abs().max().item() + 1e-12
        e_fa = (res[OURS]["grads"][pname] - gref).abs().max().item() / scale
        e_sd = (res[base]["grads"][pname] - gref).abs().max().item() / scale
        gok &= check(name, f"grad {pname}", e_fa, e_sd, 3.0, 2e-3)
        if e_fa / max(e_sd, 1e-6) > worst[0]:
            worst = (e_fa / max(e_sd, 1e-6), pname)
    rec.update(grads_ok=gok, grads_checked=len(ref_grads), worst_grad_ratio=worst[0],
               worst_grad_param=worst[1])
    # generate() with a cache: left padding, greedy; scores compared step by step while the
    # two implementations' tokens agree (random weights give near-ties, so tokens may part).
    gen_lengths = [12, 7]
    gids = torch.randint(1, cfg.vocab_size, (2, 12), generator=g).to(DEV)
    gmask = torch.ones(2, 12, dtype=torch.long, device=DEV)
    gmask[1, :12 - gen_lengths[1]] = 0
    gids = gids * gmask
    outs = {}
    for impl in (base, OURS):
        m = res[impl]["model"]
        with torch.no_grad():
            o = m.generate(input_ids=gids, attention_mask=gmask, max_new_tokens=16,
                           do_sample=False, output_scores=True, return_dict_in_generate=True,
                           pad_token_id=0, use_cache=True)
        outs[impl] = o
    sa, fa = outs[base], outs[OURS]
    steps_same = 0
    max_score_diff = 0.0
    for t in range(min(len(sa.scores), len(fa.scores))):
        d = (sa.scores[t].float() - fa.scores[t].float()).abs().max().item()
        max_score_diff = max(max_score_diff, d)
        if not torch.equal(sa.sequences[:, 12 + t], fa.sequences[:, 12 + t]):
            break
        steps_same += 1
    first = (sa.scores[0].float() - fa.scores[0].float()).abs().max().item()
    scale = sa.scores[0].float().abs().max().item()
    rec.update(generate_steps_identical=steps_same, generate_steps=len(sa.scores),
               generate_first_step_score_diff=first, generate_score_scale=scale,
               generate_max_score_diff_while_identical=max_score_diff)
    gen_ok = first <= 0.05 * scale + 0.05
    if not gen_ok:
        FAILED.append(f"{name}: generate() first-step scores differ by {first} (scale {scale})")
    rec["generate_ok"] = gen_ok
    rec["seconds_fwd_bwd"] = {impl: r["s"] for impl, r in res.items()}
    RESULT["models"][name] = rec
    print(name, json.dumps(rec), flush=True)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "transformers_e2e.json"
    print("is_flash_attn_2_available:", RESULT["is_flash_attn_2_available"], flush=True)
    if not RESULT["is_flash_attn_2_available"]:
        FAILED.append("transformers.utils.is_flash_attn_2_available() is False")
    for name, cfg in configs().items():
        try:
            compare(name, cfg, "eager" if name == "gemma2" else "sdpa")
        except Exception as e:  # keep going: report every model
            import traceback

            traceback.print_exc()
            FAILED.append(f"{name}: {type(e).__name__}: {e}")
    RESULT["failed"] = FAILED
    with open(out, "w") as f:
        json.dump(RESULT, f, indent=1)
    print("FAILED:" if FAILED else "all checks passed", *FAILED, sep="\n  ")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
