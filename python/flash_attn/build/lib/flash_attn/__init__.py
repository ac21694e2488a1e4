# FlashAttention 2.x's public package, implemented on FlashAttention-Plus (the `flashplus`
# distribution). `from flash_attn import flash_attn_func` works unchanged, on CPU and CUDA tensors.
# Extend the package path first so that FlashAttention-4 (`flash_attn.cute`, distribution
# `flash-attn-4`) can be installed next to us under the same top-level name, as upstream allows.
import pkgutil as _pkgutil

__path__ = _pkgutil.extend_path(__path__, __name__)

__version__ = "2.8.3"

from flash_attn.flash_attn_interface import (  # noqa: E402
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
)
