"""FlashAttention-Plus for Python: exact tiled attention over the library's C ABI.

``flashplus.ops`` takes any DLPack array (NumPy on the CPU backend, PyTorch CPU/CUDA tensors, CuPy)
and allocates its outputs in the caller's framework; ``flashplus._core`` is the raw extension
(preallocated outputs, positional arguments in the C structs' order) that the ``flash_attn`` drop-in
calls. Nothing here links PyTorch's C++ ABI.
"""
import sys as _sys

from . import _core
from ._core import (  # noqa: F401
    BACKEND_AUTO,
    BACKEND_CPU,
    BACKEND_CUDA,
    BACKEND_HIP,
    FlashPlusError,
)

__version__ = _core.version()

_BACKENDS = {"auto": BACKEND_AUTO, "cpu": BACKEND_CPU, "cuda": BACKEND_CUDA, "hip": BACKEND_HIP}
_torch_registered = False


def register_torch():
    """Teach the extension torch's tensor type and dtypes (idempotent; imports torch).

    Torch tensors are then read through their attributes (no DLPack capsule per call)."""
    global _torch_registered
    if _torch_registered:
        return
    import torch

    # (DLPack type code << 8) | bits, as flashplus_c.h reads them.
    dtypes = {
        torch.float16: (2 << 8) | 16,
        torch.bfloat16: (4 << 8) | 16,
        torch.float32: (2 << 8) | 32,
        torch.int32: (0 << 8) | 32,
        torch.int64: (0 << 8) | 64,
        torch.float64: (2 << 8) | 64,
        torch.uint8: (1 << 8) | 8,
        torch.int8: (0 << 8) | 8,
        torch.bool: (6 << 8) | 8,
    }
    _core.register_torch(torch.Tensor, dtypes, bool(getattr(torch.version, "hip", None)))
    _torch_registered = True


def backend_compiled(name):
    """True when the backend ("cpu", "cuda", "hip") is compiled into the loaded library."""
    return _core.backend_compiled(_BACKENDS[name])


def device_count(name):
    """Devices the backend ("cuda", "hip", "cpu") finds at run time."""
    return _core.device_count(_BACKENDS[name])


def info():
    """A dict describing the loaded library: version, C ABI, compiled backends, devices."""
    return {
        "version": __version__,
        "c_abi_version": _core.abi_version(),
        "library": _core.__file__,
        "backends": {n: {"compiled": backend_compiled(n), "devices": device_count(n)}
                     for n in ("cpu", "cuda", "hip")},
    }


if "torch" in _sys.modules:
    register_torch()

from . import ops  # noqa: E402,F401
