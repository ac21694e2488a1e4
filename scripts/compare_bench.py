#!/usr/bin/env python3
"""Compare two `flashplus bench --json` outputs, case by case: the A/B test of a change.

    scripts/compare_bench.py A.json B.json [--csv [OUT]] [--all]
    scripts/compare_bench.py --self-test

Cases are matched by name (model, mode, dtype, batch, seqlen_q, seqlen_k, heads, head_dim, mask,
and for decode the page size and split count, for varlen the sequence lengths; docs/BENCH.md).
For each case present in both with status "ok" it prints the main metric of A and B (TFLOP/s;
GB/s for decode, which counts the KV-cache read) and the ratio B/A (> 1: B is faster). A ratio
is flagged `~` (noise) when the two runs' sample ranges [min_ms, max_ms] overlap or the
difference is within twice the larger recorded relative noise (the runs' standard deviation over
mean); else `+` (B faster) or `-` (B slower). The summary gives the geometric mean of the ratios
and the counts. Cases found in only one file, or not "ok" in one, are listed after the table.
--csv writes one line per matched case (to OUT, or to stdout instead of the table when OUT is
omitted or '-'). Exit 0 (2 on unreadable input). Standard library only.
"""

import argparse
import csv
import io
import json
import math
import sys


def case_name(c):
    """A stable name of a bench case from its shape keys."""
    w = c.get("workload") or {}
    kind = w.get("kind", "prefill")
    name = "{model} {mode} {dtype} b{batch} sq{sq} sk{sk} h{h}/{hk} d{d} {mask}".format(
        model=c.get("model", "?"), mode=c.get("mode", "?"), dtype=c.get("dtype", "?"),
        batch=c.get("batch", "?"), sq=c.get("seqlen_q", "?"), sk=c.get("seqlen_k", "?"),
        h=c.get("nheads", "?"), hk=c.get("nheads_k", "?"), d=c.get("head_dim", "?"),
        mask=c.get("mask", "?"))
    # bench's decode rows already carry "decode pageP splitsS" in their mask label.
    if kind != "prefill" and kind not in str(c.get("mask", "")):
        name += " " + kind
        if kind == "decode":
            name += " page{} splits{}".format(w.get("page_size", 0), w.get("num_splits", 0))
    if kind == "varlen" and w.get("seqlens"):
        lens = w["seqlens"]
        name += " seqs{}:{}".format(len(lens), sum(int(x) for x in lens))
    return name


def metric_of(c):
    """(value, unit) of the case's main metric."""
    if (c.get("workload") or {}).get("kind") == "decode":
        return float(c.get("gbs") or 0.0), "GB/s"
    return float(c.get("tflops") or 0.0), "TFLOP/s"


def index_cases(doc):
    """name -> case; a repeated name gets ' #2', ' #3', ... in file order."""
    out = {}
    for c in doc.get("cases", []):
        base = case_name(c)
        name, k = base, 1
        while name in out:
            k += 1
            name = "{} #{}".format(base, k)
        out[name] = c
    return out


def is_noise(a, b, ratio):
    """Whether B vs A is within the runs' recorded spread."""
    lo_a, hi_a = a.get("min_ms"), a.get("max_ms")
    lo_b, hi_b = b.get("min_ms"), b.get("max_ms")
    if None not in (lo_a, hi_a, lo_b, hi_b) and lo_a <= hi_b and lo_b <= hi_a:
        return True
    noise = max(float(a.get("noise") or 0.0), float(b.get("noise") or 0.0))
    return abs(ratio - 1.0) <= 2.0 * noise


def compare(doc_a, doc_b):
    """Returns (rows, only_a, only_b, not_ok): rows of dicts for the matched ok cases."""
    ca, cb = index_cases(doc_a), index_cases(doc_b)
    rows, not_ok = [], []
    for name, a in ca.items():
        b = cb.get(name)
        if b is None:
            continue
        if a.get("status") != "ok" or b.get("status") != "ok":
            not_ok.append((name, a.get("status"), b.get("status")))
            continue
        va, unit = metric_of(a)
        vb, _ = metric_of(b)
        if va <= 0 or vb <= 0:
            not_ok.append((name, "zero metric" if va <= 0 else "ok", "zero metric" if vb <= 0 else "ok"))
            continue
        ratio = vb / va
        noise = is_noise(a, b, ratio)
        flag = "~" if noise else ("+" if ratio > 1 else "-")
        rows.append({"case": name, "unit": unit, "a": va, "b": vb, "ratio": ratio, "flag": flag,
                     "a_median_ms": a.get("median_ms"), "b_median_ms": b.get("median_ms"),
                     "a_noise": a.get("noise"), "b_noise": b.get("noise")})
    only_a = [n for n in ca if n not in cb]
    only_b = [n for n in cb if n not in ca]
    return rows, only_a, only_b, not_ok


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def summary(rows):
    faster = sum(1 for r in rows if r["flag"] == "+")
    slower = sum(1 for r in rows if r["flag"] == "-")
    noise = sum(1 for r in rows if r["flag"] == "~")
    return {"cases": len(rows), "geomean": geomean([r["ratio"] for r in rows]),
            "faster": faster, "slower": slower, "noise": noise}


def format_table(rows, only_a, only_b, not_ok, name_a="A", name_b="B"):
    out = io.StringIO()
    w = max([len(r["case"]) for r in rows] + [4])
    out.write("{:<{w}}  {:>10}  {:>10}  {:>7}  {}\n".format("case", name_a[:10], name_b[:10], "B/A",
                                                          "", w=w))
    for r in rows:
        out.write("{:<{w}}  {:>10.4g}  {:>10.4g}  {:>7.3f}  {} {}\n".format(
            r["case"], r["a"], r["b"], r["ratio"], r["flag"], r["unit"], w=w))
    s = summary(rows)
    if rows:
        out.write("geomean B/A {:.3f} over {} cases: {} faster, {} slower, {} within noise (~)\n"
                  .format(s["geomean"], s["cases"], s["faster"], s["slower"], s["noise"]))
    else:
        out.write("no case in both files\n")
    for n in only_a:
        out.write("only in A: {}\n".format(n))
    for n in only_b:
        out.write("only in B: {}\n".format(n))
    for n, sa, sb in not_ok:
        out.write("not compared ({} / {}): {}\n".format(sa, sb, n))
    return out.getvalue()


def format_csv(rows):
    out = io.StringIO()
    wr = csv.writer(out, lineterminator="\n")
    wr.writerow(["case", "unit", "a", "b", "ratio", "flag", "a_median_ms", "b_median_ms",
                 "a_noise", "b_noise"])
    for r in rows:
        wr.writerow([r["case"], r["unit"], "{:.6g}".format(r["a"]), "{:.6g}".format(r["b"]),
                     "{:.6g}".format(r["ratio"]), r["flag"], r["a_median_ms"], r["b_median_ms"],
                     r["a_noise"], r["b_noise"]])
    return out.getvalue()


def self_test():
    """Two tiny in-memory bench outputs; checks names, ratios, flags, the summary and the CSV."""
    def case(model, ms, lo, hi, noise=0.01, kind="prefill", status="ok", tflops=None, gbs=None,
             **kw):
        c = {"model": model, "status": status, "mode": "fwd", "dtype": "bf16", "batch": 2,
             "seqlen_q": 1024, "seqlen_k": 1024, "nheads": 16, "nheads_k": 16, "head_dim": 128,
             "mask": "none", "workload": {"kind": kind}, "median_ms": ms, "min_ms": lo,
             "max_ms": hi, "noise": noise}
        if kind == "decode":
            c["workload"].update({"page_size": 16, "num_splits": 0})
        c["tflops"] = tflops if tflops is not None else 10.0 / ms
        c["gbs"] = gbs if gbs is not None else 1000.0 / ms
        c.update(kw)
        return c

    a = {"cases": [case("m1", 1.0, 0.99, 1.01), case("m2", 2.0, 1.98, 2.02),
                   case("m3", 1.0, 0.95, 1.05, noise=0.02), case("dec", 1.0, 0.99, 1.01, kind="decode"),
                   case("gone", 1.0, 1.0, 1.0), case("uns", 1.0, 1.0, 1.0),
                   case("dup", 1.0, 1.0, 1.0), case("dup", 2.0, 2.0, 2.0)]}
    b = {"cases": [case("m1", 0.8, 0.79, 0.81),                  # 1.25x faster, clear
                   case("m2", 2.5, 2.45, 2.55),                  # 0.8x, clear
                   case("m3", 0.98, 0.96, 1.0, noise=0.02),      # ranges overlap: noise
                   case("dec", 0.5, 0.49, 0.51, kind="decode", tflops=0.0),  # GB/s: 2x
                   case("new", 1.0, 1.0, 1.0), case("uns", 1.0, 1.0, 1.0, status="unsupported"),
                   case("dup", 1.0, 1.0, 1.0), case("dup", 1.0, 1.0, 1.0)]}
    rows, only_a, only_b, not_ok = compare(a, b)
    by = {r["case"].split()[0] + ("#2" if r["case"].endswith("#2") else ""): r for r in rows}
    errors = []

    def check(cond, what):
        if not cond:
            errors.append(what)

    check(set(by) == {"m1", "m2", "m3", "dec", "dup", "dup#2"}, "matched cases: {}".format(sorted(by)))
    if not errors:
        check(abs(by["m1"]["ratio"] - 1.25) < 1e-9 and by["m1"]["flag"] == "+", "m1 faster")
        check(abs(by["m2"]["ratio"] - 0.8) < 1e-9 and by["m2"]["flag"] == "-", "m2 slower")
        check(by["m3"]["flag"] == "~", "m3 within noise")
        check(by["dec"]["unit"] == "GB/s" and abs(by["dec"]["ratio"] - 2.0) < 1e-9, "decode GB/s")
        check(by["dup"]["flag"] == "~" and abs(by["dup#2"]["ratio"] - 2.0) < 1e-9, "duplicates")
        s = summary(rows)
        want = math.exp((math.log(1.25) + math.log(0.8) + math.log(10 / 0.98 / 10) +
                         math.log(2.0) + 0 + math.log(2.0)) / 6)
        check(abs(s["geomean"] - want) < 1e-9, "geomean {} != {}".format(s["geomean"], want))
        check((s["faster"], s["slower"], s["noise"]) == (3, 1, 2), "counts {}".format(s))
    check(len(only_a) == 1 and only_a[0].startswith("gone "), "only in A: {}".format(only_a))
    check(len(only_b) == 1 and only_b[0].startswith("new "), "only in B: {}".format(only_b))
    check(len(not_ok) == 1 and not_ok[0][0].startswith("uns ") and not_ok[0][2] == "unsupported",
          "not ok: {}".format(not_ok))
    text = format_table(rows, only_a, only_b, not_ok)
    check("geomean B/A" in text and "only in A: gone" in text and "not compared" in text,
          "table text")
    lines = format_csv(rows).splitlines()
    check(len(lines) == 1 + len(rows) and lines[0].startswith("case,unit,a,b,ratio,flag"), "csv")
    parsed = list(csv.reader(lines))
    check(all(len(p) == len(parsed[0]) for p in parsed), "csv columns")
    if errors:
        for e in errors:
            print("compare_bench self-test FAILED: " + e, file=sys.stderr)
        return 1
    print("compare_bench self-test: ok ({} cases)".format(len(rows)))
    return 0


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", nargs="?", help="baseline: flashplus bench --json output")
    ap.add_argument("b", nargs="?", help="candidate: flashplus bench --json output")
    ap.add_argument("--csv", nargs="?", const="-", metavar="OUT",
                    help="write CSV (to OUT, or to stdout instead of the table)")
    ap.add_argument("--self-test", action="store_true", help="check this script on built-in data")
    args = ap.parse_args(argv)
    if args.self_test:
        return self_test()
    if not args.a or not args.b:
        ap.error("two JSON files are needed (or --self-test)")
    docs = []
    for path in (args.a, args.b):
        try:
            with open(path) as f:
                docs.append(json.load(f))
        except (OSError, ValueError) as e:
            print("compare_bench: {}: {}".format(path, e), file=sys.stderr)
            return 2
    rows, only_a, only_b, not_ok = compare(docs[0], docs[1])
    for label, doc in (("A", docs[0]), ("B", docs[1])):
        dev = doc.get("device") or {}
        meta = doc.get("meta") or {}
        print("{}: {} ({}), {} {}, timing {}".format(
            label, dev.get("name", "?"), dev.get("fingerprint", "?"), meta.get("git_revision", "?"),
            meta.get("date", "?"), (meta.get("settings") or {}).get("timing", "?")),
            file=sys.stderr if args.csv == "-" else sys.stdout)
    if args.csv != "-":
        sys.stdout.write(format_table(rows, only_a, only_b, not_ok))
    if args.csv:
        text = format_csv(rows)
        if args.csv == "-":
            sys.stdout.write(text)
        else:
            with open(args.csv, "w") as f:
                f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
