# Generator of the wgmma wrappers in kernels/gpu/bwd/bwd_gmma.h (the operand lists are long).
def asm_block(n, rs, ty):
    nacc = n // 2
    regs = ", ".join("%%%d" % i for i in range(nacc))
    if rs:
        a = "{%%%d, %%%d, %%%d, %%%d}" % tuple(range(nacc, nacc + 4)); b = "%%%d" % (nacc + 4); sd = nacc + 5
        imm = "p, 1, 1, %%%d;" % (sd + 1)
        ins = '"r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(kTransB)'
    else:
        a = "%%%d" % nacc; b = "%%%d" % (nacc + 1); sd = nacc + 2
        imm = "p, 1, 1, %%%d, %%%d;" % (sd + 1, sd + 2)
        ins = '"l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kTransA), "n"(kTransB)'
    outs = ", ".join('"+f"(d[%d][%d])' % (i // 4, i % 4) for i in range(nacc))
    L = []
    L.append("    asm volatile(")
    L.append("        \"{\\n.reg .pred p;\\nsetp.ne.b32 p, %%%d, 0;\\n\"" % sd)
    L.append("        \"wgmma.mma_async.sync.aligned.m64n%dk16.f32.%s.%s \"" % (n, ty, ty))
    L.append("        \"{%s}, \"" % regs)
    L.append("        \"%s, %s, %s\\n}\\n\"" % (a, b, imm))
    L.append("        : " + outs)
    L.append("        : " + ins + ");")
    return "\n".join(L)

def fn(n, rs):
    name = "gmma_rs_n%d" % n if rs else "gmma_ss_n%d" % n
    L = []
    if rs:
        L.append("template <typename T, int kTransB>")
        L.append("FP_DEV void %s(float (&d)[%d][4], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {" % (name, n // 8))
    else:
        L.append("template <typename T, int kTransA, int kTransB>")
        L.append("FP_DEV void %s(float (&d)[%d][4], uint64_t desc_a, uint64_t desc_b, int scale_d) {" % (name, n // 8))
    L.append("#if FLASHPLUS_HAS_WGMMA")
    L.append("  if constexpr (std::is_same<T, platform::bf16_t>::value) {")
    L.append(asm_block(n, rs, "bf16"))
    L.append("  } else {")
    L.append(asm_block(n, rs, "f16"))
    L.append("  }")
    L.append("#else")
    L.append("  (void)d; (void)%s; (void)desc_b; (void)scale_d;" % ("a" if rs else "desc_a"))
    L.append("  __trap();")
    L.append("#endif")
    L.append("}")
    return "\n".join(L)

print("\n\n".join(fn(n, rs) for n in (64, 128) for rs in (False, True)))
