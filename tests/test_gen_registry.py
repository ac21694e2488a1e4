#!/usr/bin/env python3
"""Tests of kernels/registry/gen_registry.py (run by CTest as `gen_registry`).

The generator's output for the real spec and for edited copies: one registry entry per spec
combination (family x built dtype x built head dim x tile), unique names, the subsets CMake asks
for, and the instance files written for exactly the built combinations.
"""
import copy
import json
import os
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "kernels", "registry"))
import gen_registry  # noqa: E402

with open(os.path.join(ROOT, "kernels", "registry", "spec.json")) as f:
    SPEC = json.load(f)
ALL_DIMS = [64, 128, 256]
FULL = dict(dtypes=["f16", "bf16"], head_dims=ALL_DIMS, vendors=["cuda", "hip"],
            cuda_archs=["80-real", "90a-real"])


def expected_count(spec, dtypes, head_dims, vendors, cuda_archs):
    """Entries the spec describes, counted here from the spec alone (not by the generator)."""
    fams = {f["name"]: f for f in spec["families"]}
    n = 0
    for f in spec["families"]:
        if f["vendor"] not in vendors:
            continue
        if f["arch"] == "sm_90a" and not any(a.startswith("90a") for a in cuda_archs):
            continue
        tiles = fams[f.get("tiles_of", f["name"])]["tiles"]
        dims = spec["instances"][f["instance"]]["head_dims"]
        for d, lst in tiles.items():
            if int(d) not in head_dims or (dims is not None and int(d) not in dims):
                continue
            per = min(1, len(lst)) if f.get("default_only") else len(lst)
            n += per * len([t for t in spec["dtypes"] if t in dtypes])
    return n + len(spec["cpu"]["tiles"])


class GenRegistry(unittest.TestCase):
    def gen(self, spec=SPEC, **kw):
        args = dict(FULL)
        args.update(kw)
        return gen_registry.generate(spec, args["dtypes"], args["head_dims"], args["vendors"],
                                     args["cuda_archs"])

    def test_full_build_one_entry_per_combination(self):
        files, sources, entries = self.gen()
        self.assertEqual(len(entries), expected_count(SPEC, **FULL))
        names = [e["name"] for e in entries]
        self.assertEqual(len(names), len(set(names)))
        for e in entries:
            if e["family"] == "cpu":
                self.assertEqual(e["name"], "cpu_" + e["tile"])
            else:
                self.assertEqual(e["name"], f"{e['family']}_{e['dtype']}_d{e['head_dim']}_{e['tile']}")
            self.assertTrue(e["reason"], e["name"])
        self.assertIn("fwd_sm90_bf16_d128_m128n128s2", names)
        self.assertIn("kvcache_f16_d128_n32w2s2", names)
        # 26 instance files: fwd 6, bwd 6, bwd_var 4, fwd_sm90 4, fwd_sm90_var 4, kvcache 2.
        self.assertEqual(len(sources), 26)
        self.assertEqual(len(set(sources)), 26)

    def test_cpu_only_build(self):
        files, sources, entries = self.gen(vendors=[], cuda_archs=[])
        self.assertEqual(sources, [])
        self.assertTrue(all(e["vendor"] == "cpu" for e in entries))
        self.assertEqual(len(entries), len(SPEC["cpu"]["tiles"]))
        self.assertIn("#define FLASHPLUS_FWD_INSTANCES(X)\n", files["instances.h"])

    def test_subset(self):
        kw = dict(dtypes=["bf16"], head_dims=[64], vendors=["cuda"], cuda_archs=["90a-real"])
        files, sources, entries = self.gen(**kw)
        self.assertEqual(len(entries), expected_count(SPEC, **kw))
        gpu = [e for e in entries if e["vendor"] != "cpu"]
        self.assertTrue(gpu)
        self.assertTrue(all(e["dtype"] == "bf16" and e["head_dim"] == 64 for e in gpu))
        self.assertEqual(sorted(os.path.basename(s) for s in sources),
                         ["bwd_bf16_d64.cu", "bwd_var_bf16_d64.cu", "fwd_bf16_d64.cu",
                          "fwd_sm90_bf16_d64.cu", "fwd_sm90_var_bf16_d64.cu", "kvcache_bf16.cu"])
        tiles = files["tiles.h"]
        self.assertIn("#define FLASHPLUS_FWD_TILES_D128(X)\n", tiles)  # not built: empty list
        self.assertIn("#define FLASHPLUS_FWD_TILES_D64(X) X(64, 128, 64, 4)", tiles)
        self.assertIn("#define FLASHPLUS_KV_TILES_D256(X)\n", tiles)
        self.assertIn("#define FLASHPLUS_FWD_INSTANCES(X) X(bf16, 64)\n", files["instances.h"])
        # The buckets stay the spec's: a call of head dim 100 must not be taken by the d64 kernel.
        self.assertIn("#define FLASHPLUS_FWD_HEAD_DIMS {64, 128, 256}\n", files["instances.h"])
        # kv-cache: one file per dtype; the built buckets are those with tiles in this build.
        self.assertIn("#define FLASHPLUS_KVCACHE_INSTANCES(X) X(bf16)\n", files["instances.h"])
        self.assertIn("#define FLASHPLUS_KVCACHE_HEAD_DIMS {64, 128, 256}\n", files["instances.h"])
        self.assertIn("#define FLASHPLUS_KVCACHE_BUILT_HEAD_DIMS(X) X(64)\n", files["instances.h"])

    def test_no_sm90a_target_no_hopper_entries(self):
        _, sources, entries = self.gen(vendors=["cuda"], cuda_archs=["80-real"])
        self.assertFalse([e for e in entries if e["arch"] == "sm_90a"])
        self.assertTrue([e for e in entries if e["family"] == "fwd"])
        # The Hopper files still compile (stubs outside the sm_90a pass), as before the registry.
        self.assertIn("fwd_sm90_f16_d64.cu", [os.path.basename(s) for s in sources])

    def test_hip_entries(self):
        _, sources, entries = self.gen(vendors=["hip"], cuda_archs=[])
        fams = {e["family"] for e in entries}
        self.assertEqual(fams, {"fwd_mfma", "bwd_mfma", "cpu"})
        self.assertEqual(len(sources), 12)  # fwd and bwd: the HIP instances

    def test_new_head_dim_is_one_edit(self):
        spec = copy.deepcopy(SPEC)
        spec["instances"]["fwd"]["head_dims"] = [64, 96, 128, 256]
        fwd = next(f for f in spec["families"] if f["name"] == "fwd")
        fwd["tiles"]["96"] = [[[128, 64, 4], "d96: the d128 default shape"]]
        kw = dict(FULL, head_dims=[64, 96, 128, 256])
        files, sources, entries = self.gen(spec, **kw)
        self.assertEqual(len(entries), expected_count(spec, **kw))
        self.assertIn("fwd_bf16_d96_m128n64w4", [e["name"] for e in entries])
        self.assertIn("gpu/fwd_f16_d96.cu", sources)
        self.assertIn("launch_fwd<platform::half_t, 96>", files["gpu/fwd_f16_d96.cu"])
        self.assertIn("#define FLASHPLUS_FWD_TILES_D96(X) X(96, 128, 64, 4)", files["tiles.h"])
        self.assertIn("#define FLASHPLUS_FWD_HEAD_DIMS {64, 96, 128, 256}", files["instances.h"])
        # The launchers read the _ALL list: no kernel header names the new bucket.
        self.assertIn("#define FLASHPLUS_FWD_TILES_ALL(X) FLASHPLUS_FWD_TILES_D64(X) "
                      "FLASHPLUS_FWD_TILES_D96(X) FLASHPLUS_FWD_TILES_D128(X)", files["tiles.h"])

    def test_rejects_what_the_spec_lacks(self):
        with self.assertRaises(SystemExit):
            self.gen(head_dims=[80])
        with self.assertRaises(SystemExit):
            self.gen(dtypes=["f32"])

    def test_duplicate_names_rejected(self):
        spec = copy.deepcopy(SPEC)
        fwd = next(f for f in spec["families"] if f["name"] == "fwd")
        fwd["tiles"]["64"].append(copy.deepcopy(fwd["tiles"]["64"][0]))
        with self.assertRaises(SystemExit):
            self.gen(spec)

    def test_main_writes_only_changed_files(self):
        with tempfile.TemporaryDirectory() as out:
            argv = ["--spec", os.path.join(ROOT, "kernels", "registry", "spec.json"), "--out", out,
                    "--vendors=cuda", "--head-dims=64", "--dtypes=f16", "--cuda-archs=90a-real"]
            gen_registry.main(argv)
            p = os.path.join(out, "flashplus_gen", "gpu", "fwd_f16_d64.cu")
            t0 = os.stat(p).st_mtime_ns
            os.utime(p, ns=(t0 - 10**9, t0 - 10**9))
            gen_registry.main(argv)
            self.assertEqual(os.stat(p).st_mtime_ns, t0 - 10**9)
            # A narrower subset removes the files it no longer builds.
            gen_registry.main(argv[:4] + ["--vendors=", "--head-dims=64", "--dtypes=f16"])
            self.assertFalse(os.path.exists(p))


if __name__ == "__main__":
    unittest.main(verbosity=1)
