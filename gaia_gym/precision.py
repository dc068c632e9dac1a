"""Which number format to compute in: bf16 autocast only where the hardware runs it fast.

bf16 matmuls are ~4x faster than fp32 on CPUs with AMX or AVX-512 BF16 (and on CUDA GPUs with bf16
support), but several times *slower* on CPUs without them (measured 7x slower on an AVX2-only EPYC),
where PyTorch emulates bf16. Every stage asks `use_bf16(device, requested)` instead of assuming.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import nullcontext
from functools import lru_cache

import torch
from torch import nn

from gaia_gym.errors import ConfigError


@lru_cache(maxsize=None)
def _cpu_has_fast_bf16() -> bool:
    cpu = torch.cpu
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, name, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # pragma: no cover - private helpers may change between releases
            pass
    return False


def bf16_is_fast(device: torch.device | str) -> bool:
    """True where bf16 autocast speeds things up: CUDA with bf16 support, CPUs with AMX / AVX-512 BF16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_has_fast_bf16()
    return False


def use_bf16(device: torch.device | str, requested: bool = True) -> bool:
    """bf16 when requested and fast on `device`; fp32 otherwise."""
    return bool(requested) and bf16_is_fast(device)


def precision_name(device: torch.device | str, requested: bool = True) -> str:
    return "bf16-autocast" if use_bf16(device, requested) else "fp32"


def autocast(device: torch.device | str, enabled: bool = True):
    """bf16 autocast where it is fast (see `use_bf16`); a no-op context elsewhere or when disabled."""
    device = torch.device(device)
    if not use_bf16(device, enabled):
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def int8_linears(module: nn.Module) -> nn.Module:
    """A copy of `module` whose `nn.Linear` layers run as int8 dynamic quantization (weights int8 per
    tensor, activations quantized on the fly; fbgemm's int8 kernels on x86): about 1.3x the fp32 matmul
    rate on an AVX2 CPU (docs/performance.md). Lower precision, like bf16, so opt-in (the engine's
    ``int8=True``); its quality cost is measured in docs/performance.md. CPU only. The original is untouched."""
    if any(p.device.type != "cpu" for p in module.parameters()):
        raise ConfigError("int8 imagination runs on the CPU only (use bf16 on CUDA)")
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as e:  # pragma: no cover - removed in some future torch
        raise ConfigError(f"int8 imagination needs torch.ao.quantization.quantize_dynamic ({e})") from None
    if "fbgemm" in torch.backends.quantized.supported_engines and torch.backends.quantized.engine != "fbgemm":
        torch.backends.quantized.engine = "fbgemm"
    with warnings.catch_warnings():  # the eager API warns of its planned move to torchao on every call
        warnings.simplefilter("ignore")
        q = quantize_dynamic(copy.deepcopy(module).eval(), {nn.Linear}, dtype=torch.qint8)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    for m in q.modules():  # under bf16 autocast (AMX machines) activations arrive in bf16; fbgemm takes fp32
        if isinstance(m, DynamicLinear):
            m.register_forward_pre_hook(_float_inputs)
    return q


def _float_inputs(module, args):
    """Forward pre-hook: floating-point tensor inputs as float32 (what int8 dynamic linears accept)."""
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
