"""Measurement primitives shared by the complexity tool and the benchmarks: FLOPs (torch's own
counter), activation counts, live-tensor peak memory on any device, and wall-clock timing."""
from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten

# fvcore counts as "activations" the outputs of convolutions and matrix multiplies (detectron2's
# activation_count); attention's two batched matmuls are included, as in fvcore.
_ACTIVATION_OPS = {
    aten.convolution.default, aten.mm.default, aten.addmm.default, aten.bmm.default,
    aten.baddbmm.default, aten.linear.default, aten.matmul.default,
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_cudnn_attention.default,
}


class ActivationCounter(TorchDispatchMode):
    """Counts output elements of conv / matmul / attention ops (fvcore's activation count)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _ACTIVATION_OPS:
            first = tree_flatten(out)[0][0]
            if isinstance(first, torch.Tensor):
                self.count += first.numel()
        return out


class LiveMemoryTracker(TorchDispatchMode):
    """Peak bytes of tensors allocated inside the context and still alive, on any device.

    Each new storage is counted when an op creates it and released when its storage is freed
    (storages keep one Python object while alive, so a weakref finaliser sees the release).
    Tensors that existed before (parameters) are not counted: this is the step's own memory,
    activations + gradients + temporaries, the quantity CUDA's ``max_memory_allocated`` shows on
    top of the model's weights.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key, nbytes = id(storage), storage.nbytes()
            if nbytes == 0 or key in self._seen:
                continue
            self._seen.add(key)
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._release, key, nbytes)
        return out


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args,
                             **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's counter registers the CUDA attention kernels but not the CPU flash kernel SDPA uses here
_EXTRA_FLOP_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` by torch's counter (a multiply-add counts as 2 FLOPs)."""
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
    with counter:
        fn()
    return int(counter.get_total_flops())


def count_activations(fn: Callable[[], Any]) -> int:
    counter = ActivationCounter()
    with counter:
        fn()
    return counter.count


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated by one call of ``fn`` beyond what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    tracker = LiveMemoryTracker()
    with tracker:
        fn()
    return tracker.peak


def time_call(fn: Callable[[], Any], device: torch.device, iters: int = 3,
              warmup: int = 1) -> float:
    """Median seconds per call of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def matmul_peak_flops(device: torch.device, n: int = 2048, dtype: torch.dtype = torch.float32,
                      iters: int = 5) -> float:
    """Practical peak: FLOP/s of a large square matrix multiply on ``device`` (2 n^3 per call)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_call(lambda: a @ b, device, iters=iters, warmup=2)
    return 2 * n**3 / seconds

