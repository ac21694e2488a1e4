# The package as transformers sees it (API.md §1, §9.1): importable names, the distribution name
# `flash-attn` and its version, and the parameter names inspect.signature shows.
import importlib
import importlib.metadata as md
import inspect

import pytest

import flash_attn

NAMES = {
    "flash_attn": ["flash_attn_func", "flash_attn_kvpacked_func", "flash_attn_qkvpacked_func",
                   "flash_attn_varlen_func", "flash_attn_varlen_kvpacked_func",
                   "flash_attn_varlen_qkvpacked_func", "flash_attn_with_kvcache", "__version__"],
    "flash_attn.flash_attn_interface": [
        "FlashAttnFunc", "FlashAttnKVPackedFunc", "FlashAttnQKVPackedFunc", "FlashAttnVarlenFunc",
        "FlashAttnVarlenKVPackedFunc", "FlashAttnVarlenQKVPackedFunc", "_flash_attn_forward",
        "_flash_attn_backward", "_flash_attn_varlen_forward", "_flash_attn_varlen_backward",
        "_wrapped_flash_attn_forward", "_wrapped_flash_attn_backward",
        "_wrapped_flash_attn_varlen_forward", "_wrapped_flash_attn_varlen_backward",
        "maybe_contiguous", "round_multiple", "_get_block_size_n", "USE_TRITON_ROCM",
        "flash_attn_gpu", "flash_attn_func", "flash_attn_with_kvcache"],
    "flash_attn.bert_padding": ["unpad_input", "pad_input", "index_first_axis",
                                "index_put_first_axis", "index_first_axis_residual",
                                "unpad_input_for_concatenated_sequences", "IndexFirstAxis",
                                "IndexPutFirstAxis", "IndexFirstAxisResidual"],
    "flash_attn.layers.rotary": ["apply_rotary_emb", "apply_rotary_emb_func",
                                 "apply_rotary_emb_qkv_", "apply_rotary_emb_kv_",
                                 "RotaryEmbedding", "apply_rotary_emb_torch", "rotate_half",
                                 "ApplyRotaryEmb", "ApplyRotaryEmbQKV_", "ApplyRotaryEmbKV_"],
    "flash_attn.ops.triton.rotary": ["apply_rotary"],
}


@pytest.mark.parametrize("module", list(NAMES))
def test_names_exist(module):
    m = importlib.import_module(module)
    for n in NAMES[module]:
        assert hasattr(m, n), f"{module}.{n}"


COMMON = ["dropout_p", "softmax_scale", "causal", "window_size", "softcap", "alibi_slopes",
          "deterministic", "return_attn_probs"]
SIGNATURES = {
    "flash_attn_func": ["q", "k", "v"] + COMMON,
    "flash_attn_kvpacked_func": ["q", "kv"] + COMMON,
    "flash_attn_qkvpacked_func": ["qkv"] + COMMON,
    "flash_attn_varlen_func": ["q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q",
                               "max_seqlen_k"] + COMMON + ["block_table"],
    "flash_attn_varlen_kvpacked_func": ["q", "kv", "cu_seqlens_q", "cu_seqlens_k",
                                        "max_seqlen_q", "max_seqlen_k"] + COMMON,
    "flash_attn_varlen_qkvpacked_func": ["qkv", "cu_seqlens", "max_seqlen"] + COMMON,
    "flash_attn_with_kvcache": ["q", "k_cache", "v_cache", "k", "v", "rotary_cos", "rotary_sin",
                                "cache_seqlens", "cache_batch_idx", "cache_leftpad",
                                "block_table", "softmax_scale", "causal", "window_size",
                                "softcap", "rotary_interleaved", "alibi_slopes", "num_splits",
                                "return_softmax_lse"],
}


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_signatures(name):
    params = inspect.signature(getattr(flash_attn, name)).parameters
    assert list(params) == SIGNATURES[name]
    defaults = {"dropout_p": 0.0, "softmax_scale": None, "causal": False,
                "window_size": (-1, -1), "softcap": 0.0, "alibi_slopes": None,
                "deterministic": False, "return_attn_probs": False, "block_table": None,
                "rotary_interleaved": True, "num_splits": 0, "return_softmax_lse": False,
                "k": None, "v": None, "cache_seqlens": None}
    for p, want in defaults.items():
        if p in params and not (name == "flash_attn_func" and p in ("k", "v")) and not (
                name == "flash_attn_varlen_func" and p in ("k", "v")):
            assert params[p].default == want, (name, p)
    # transformers' feature gates
    if name == "flash_attn_varlen_func":
        for p in ("dropout_p", "window_size", "deterministic", "softcap", "max_seqlen_q",
                  "max_seqlen_k", "block_table"):
            assert p in params
        for p in ("s_aux", "learnable_sink", "page_table"):
            assert p not in params


def _dist_installed():
    try:
        md.version("flash-attn")
        return True
    except md.PackageNotFoundError:
        return False


needs_dist = pytest.mark.skipif(not _dist_installed(),
                                reason="flash-attn is not installed as a distribution "
                                       "(pip install ./python/flash_attn)")


@needs_dist
def test_distribution_version_like_transformers():
    from packaging import version
    v = md.version("flash-attn")
    assert v == md.version("flash_attn") == flash_attn.__version__
    assert version.parse(v) >= version.parse("2.4.1")
    assert version.parse(v).release[:2] == (2, 8)


@needs_dist
def test_packages_distributions_maps_flash_attn():
    dists = md.packages_distributions().get("flash_attn", [])
    assert "flash-attn" in [d.replace("_", "-").lower() for d in dists]


def test_version_string_and_path():
    assert flash_attn.__version__.startswith("2.8.")
    assert isinstance(flash_attn.__path__, list)  # pkgutil.extend_path (FlashAttention-4)
    assert importlib.util.find_spec("flash_attn") is not None
