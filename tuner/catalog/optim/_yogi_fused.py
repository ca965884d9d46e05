"""Yogi's fused step: one Triton kernel updates every tensor of one device and dtype.

Why Triton rather than ``torch.compile``: Triton ships with torch's CUDA builds and compiles
one kernel per (dtype, flags) once per process, where ``torch.compile`` would trace the
optimizer and recompile when a scheduler changes the learning rate (a Python float) unless it
became a tensor. Triton's CPU interpreter (``TRITON_INTERPRET=1``) runs the very same kernel on
CPU tensors, and its compiler builds it for a GPU on any machine, so the test suite checks both
without a GPU.

One launch covers a whole list of tensors of different sizes. The kernel reads a table with one
row per tensor (the addresses of the parameter, its gradient, both moments and its step count,
the number of values and the tensor's first block) and a second table naming the tensor of each
block. Building the tables costs a Python pass over the tensors and a host-to-device copy, so
they are cached, keyed by the addresses and sizes: parameters and moments never move, and the
caching allocator usually hands a training loop's gradients the same addresses every step.

Like torch's fused Adam, the step counts live on the parameters' device and both bias corrections
are computed in the kernel (in float64, so that ``1 - beta2**t`` keeps its digits at small
``t``): the host never reads a step count, so the step is free of synchronisation and can be
captured in a CUDA graph (``capturable=True``).
"""

from __future__ import annotations

import functools
import itertools
import os
import types
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError as _import_error:  # fused=True then raises; nothing else needs Triton
    triton = None
    _TRITON_IMPORT_ERROR: ImportError | None = _import_error
else:
    _TRITON_IMPORT_ERROR = None

__all__ = ["FusedTables", "check_fused_param", "fused_yogi"]

# Values per block. 4096 float32 values move 112 KiB per block (7 reads and writes of 4 bytes
# each), enough to hide the table look-ups; the number of blocks of a 100M-value model (~25k)
# still fills every SM many times over. Chosen without a GPU to measure on:
# `python benchmarks/optim_step.py --sweep` times the alternatives.
BLOCK = 4096
NUM_WARPS = 8
ROW = 8  # int64 entries per tensor in the table: 5 addresses, numel, first block, padding

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``), read the
    way Triton reads it."""
    knobs = getattr(triton, "knobs", None)  # Triton >= 3.4
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")


def check_fused_param(p: Tensor) -> None:
    """Raise a RuntimeError naming the problem if the fused kernel cannot update ``p``."""
    if triton is None:
        raise RuntimeError(
            f"Yogi(fused=True) needs Triton, which did not import ({_TRITON_IMPORT_ERROR}). "
            "Triton ships with torch's CUDA builds on Linux (or `pip install triton`); "
            "otherwise use fused=False."
        )
    if p.dtype not in _SUPPORTED_DTYPES:
        raise RuntimeError(
            "Yogi(fused=True) supports float32, float16 and bfloat16 parameters, "
            f"but got a {p.dtype} parameter; use fused=False for it"
        )
    if p.device.type == "cuda":
        if _interpreting():
            raise RuntimeError(
                "Yogi(fused=True) cannot run CUDA tensors in Triton's CPU interpreter "
                "(TRITON_INTERPRET=1 is set); unset it to run the compiled kernel"
            )
    elif p.device.type != "cpu" or not _interpreting():
        raise RuntimeError(
            f"Yogi(fused=True) runs on CUDA tensors, but got a parameter on {p.device}. Use "
            "fused=False there (on CPU the default foreach path is the fast one), or set "
            "TRITON_INTERPRET=1 to run the kernel in Triton's slow CPU interpreter, as the "
            "tests do."
        )


_DEVICE_FUNCTIONS: list[Callable] = []


def _device_function(fn: Callable) -> Callable:
    """Mark ``fn`` as a function the kernel calls: :func:`_kernel` jits it with the kernel, for
    the kernel's mode (Triton inlines it), and the kernel finds it under its own name."""
    _DEVICE_FUNCTIONS.append(fn)
    return fn


def _yogi_kernel(
    rows,
    owners,
    lr,
    one_minus_beta1,
    one_minus_beta2,
    eps,
    weight_decay,
    MAXIMIZE: tl.constexpr,
    WEIGHT_DECAY: tl.constexpr,
    ALIGNED: tl.constexpr,
    DTYPE: tl.constexpr,
    ROW: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One block of one tensor: the update in docs/catalog.md, in the order ``_single_tensor_yogi``
    computes it, so that both give the same float32 values up to rounding."""
    block = tl.program_id(0)
    tensor = tl.load(owners + block)
    row = rows + tensor * ROW
    param_ptr = _tensor_pointer(row, 0, ALIGNED, DTYPE)
    grad_ptr = _tensor_pointer(row, 1, ALIGNED, DTYPE)
    exp_avg_ptr = _tensor_pointer(row, 2, ALIGNED, DTYPE)
    exp_avg_sq_ptr = _tensor_pointer(row, 3, ALIGNED, DTYPE)
    step_ptr = tl.load(row + 4).to(tl.pointer_type(tl.float32))
    numel = tl.load(row + 5)
    start = (block - tl.load(row + 6)) * BLOCK
    offsets = start + tl.arange(0, BLOCK)
    step_size, eps_hat = _step_size_and_eps(step_ptr, lr, one_minus_beta1, one_minus_beta2, eps)

    # Full blocks load and store without a mask, which the compiler vectorizes; only a tensor's
    # last block needs one.
    full = start + BLOCK <= numel
    mask = offsets < numel
    param, grad, exp_avg, exp_avg_sq = _load_block(
        param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, offsets, full, mask
    )
    param, exp_avg, exp_avg_sq = _yogi_update(
        param,
        grad,
        exp_avg,
        exp_avg_sq,
        step_size,
        eps_hat,
        one_minus_beta1,
        one_minus_beta2,
        weight_decay,
        MAXIMIZE,
        WEIGHT_DECAY,
    )
    _store_block(
        param_ptr,
        exp_avg_ptr,
        exp_avg_sq_ptr,
        param,
        exp_avg,
        exp_avg_sq,
        offsets,
        full,
        mask,
        DTYPE,
    )


@_device_function
def _tensor_pointer(row, column, ALIGNED: tl.constexpr, DTYPE: tl.constexpr):
    """The address in ``column`` of the tensor's table row, as a pointer to ``DTYPE``."""
    ptr = tl.load(row + column).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        # Every address is a multiple of 16 bytes (checked on the host), which lets the compiler
        # use 128-bit loads and stores. The hint must sit on the pointer: on the integer it
        # was cast from, it does not reach the loads.
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@_device_function
def _step_size_and_eps(step_ptr, lr, one_minus_beta1, one_minus_beta2, eps):
    """The step size (negative: the update adds it) and the epsilon, both bias-corrected for
    the tensor's step count, in float32."""
    # Bias corrections in float64 from the step count, already incremented: beta**t as
    # exp(t * log(beta)), which float64 keeps to ~1e-15 relative. beta is rebuilt from 1 - beta,
    # which float32 holds to 8 digits where beta itself loses them (0.999 is 0.99900001 in
    # float32), and 1 - beta**t would carry that error, 1e-5 relative, into every step.
    t = tl.load(step_ptr).to(tl.float64)
    beta1_t = tl.exp(t * tl.log(1.0 - tl.cast(one_minus_beta1, tl.float64)))
    beta2_t = tl.exp(t * tl.log(1.0 - tl.cast(one_minus_beta2, tl.float64)))
    bias_correction2_sqrt = tl.sqrt(1.0 - beta2_t)
    step_size = (-tl.cast(lr, tl.float64) * bias_correction2_sqrt / (1.0 - beta1_t)).to(tl.float32)
    eps_hat = (tl.cast(eps, tl.float64) * bias_correction2_sqrt).to(tl.float32)
    return step_size, eps_hat


@_device_function
def _load_block(param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, offsets, full, mask):
    """The block's parameter, gradient and moments, in float32; a masked-off value reads as
    0 (1 for the second moment, whose square root divides)."""
    if full:
        param = tl.load(param_ptr + offsets)
        grad = tl.load(grad_ptr + offsets)
        exp_avg = tl.load(exp_avg_ptr + offsets)
        exp_avg_sq = tl.load(exp_avg_sq_ptr + offsets)
    else:
        param = tl.load(param_ptr + offsets, mask=mask, other=0.0)
        grad = tl.load(grad_ptr + offsets, mask=mask, other=0.0)
        exp_avg = tl.load(exp_avg_ptr + offsets, mask=mask, other=0.0)
        exp_avg_sq = tl.load(exp_avg_sq_ptr + offsets, mask=mask, other=1.0)
    param = param.to(tl.float32)
    grad = grad.to(tl.float32)
    exp_avg = exp_avg.to(tl.float32)
    exp_avg_sq = exp_avg_sq.to(tl.float32)
    return param, grad, exp_avg, exp_avg_sq


@_device_function
def _yogi_update(
    param,
    grad,
    exp_avg,
    exp_avg_sq,
    step_size,
    eps_hat,
    one_minus_beta1,
    one_minus_beta2,
    weight_decay,
    MAXIMIZE: tl.constexpr,
    WEIGHT_DECAY: tl.constexpr,
):
    """Yogi's update of one block in float32: the new parameter and moments."""
    if MAXIMIZE:
        grad = -grad
    if WEIGHT_DECAY:
        grad = grad + weight_decay * param
    # torch.lerp's formula, whose form depends on the weight.
    exp_avg = tl.where(
        one_minus_beta1 < 0.5,
        exp_avg + one_minus_beta1 * (grad - exp_avg),
        grad - (grad - exp_avg) * (1.0 - one_minus_beta1),
    )
    grad_sq = grad * grad
    diff = exp_avg_sq - grad_sq
    # sign(diff), keeping a NaN a NaN as torch.sign does.
    sign = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, diff * 0.0))
    exp_avg_sq = exp_avg_sq - one_minus_beta2 * (sign * grad_sq)
    denom = tl.sqrt_rn(exp_avg_sq) + eps_hat
    param = param + step_size * tl.div_rn(exp_avg, denom)
    return param, exp_avg, exp_avg_sq


@_device_function
def _store_block(
    param_ptr,
    exp_avg_ptr,
    exp_avg_sq_ptr,
    param,
    exp_avg,
    exp_avg_sq,
    offsets,
    full,
    mask,
    DTYPE: tl.constexpr,
):
    """Store the block's parameter and moments back, as ``DTYPE``."""
    if full:
        tl.store(param_ptr + offsets, param.to(DTYPE))
        tl.store(exp_avg_ptr + offsets, exp_avg.to(DTYPE))
        tl.store(exp_avg_sq_ptr + offsets, exp_avg_sq.to(DTYPE))
    else:
        tl.store(param_ptr + offsets, param.to(DTYPE), mask=mask)
        tl.store(exp_avg_ptr + offsets, exp_avg.to(DTYPE), mask=mask)
        tl.store(exp_avg_sq_ptr + offsets, exp_avg_sq.to(DTYPE), mask=mask)


@functools.cache
def _kernel(interpret: bool) -> Callable:
    """The kernel, jitted for the mode Triton reads from ``TRITON_INTERPRET`` when decorating:
    compiled for CUDA, or run by the CPU interpreter. Both can live in one process.

    So the functions the kernel calls are jitted here too, for the same mode, and the kernel
    reads them from a namespace of its own: module-level ``@triton.jit`` functions would be
    jitted once, at import, for one mode only (a compiled kernel cannot call an interpreted
    function, nor the interpreter a compiled one).
    """
    del interpret  # the cache key: triton.jit reads the environment itself
    scope = dict(globals())
    scope.update((fn.__name__, triton.jit(fn)) for fn in _DEVICE_FUNCTIONS)
    kernel = types.FunctionType(_yogi_kernel.__code__, scope, argdefs=_yogi_kernel.__defaults__)
    kernel.__annotations__ = _yogi_kernel.__annotations__
    kernel.__doc__ = _yogi_kernel.__doc__
    return triton.jit(kernel)


_TRITON_DTYPES = (
    {}
    if triton is None
    else {
        torch.float32: tl.float32,
        torch.float16: tl.float16,
        torch.bfloat16: tl.bfloat16,
    }
)


class FusedTables:
    """The kernel's tables for recently seen tensor lists, on the tensors' device.

    Keyed by every address and size the tables hold, so a hit is always right. Entries used
    while a CUDA graph is being captured are kept for good: the graph reads their device
    tables at every replay (and, for one built during capture, replays the copy that filled
    it from pinned host memory), so neither may be freed.
    """

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple, _Tables] = OrderedDict()
        self._kept: dict[tuple, _Tables] = {}

    def __len__(self) -> int:
        return len(self._entries) + len(self._kept)

    def get(self, lists: Sequence[Sequence[Tensor]], *, capturing: bool) -> _Tables:
        """The tables for ``lists`` (params, grads, exp_avgs, exp_avg_sqs, steps), built on a
        miss."""
        key = (
            *(tuple(map(Tensor.data_ptr, tensors)) for tensors in lists),
            tuple(map(Tensor.numel, lists[0])),
        )
        tables = self._kept.get(key)
        if tables is not None:
            return tables
        tables = self._entries.pop(key, None) or _Tables(key, lists[0][0].device)
        if capturing:
            # The graph reads these device tables at every replay: never evict them.
            self._kept[key] = tables
        elif self.capacity > 0:
            self._entries[key] = tables  # most recently used last
            if len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return tables


class _Tables:
    """What the kernel reads for one list of tensors.

    ``rows``: one row of ``ROW`` int64 per tensor (addresses of the parameter, gradient, both
    moments and step count; number of values; first block). ``owners``: the tensor of each
    block. ``aligned``: every address of the first four lists is a multiple of 16 bytes.
    """

    def __init__(self, key: tuple, device: torch.device) -> None:
        *addresses, numels = key
        n = len(numels)
        blocks_per_tensor = [(k + BLOCK - 1) // BLOCK for k in numels]
        firsts = list(itertools.accumulate(blocks_per_tensor, initial=0))
        self.blocks: int = firsts.pop()
        host = torch.zeros(n * ROW + self.blocks, dtype=torch.int64)
        rows = host[: n * ROW].view(n, ROW)
        for column, column_addresses in enumerate(addresses):
            rows[:, column] = torch.tensor(column_addresses, dtype=torch.int64)
        rows[:, 5] = torch.tensor(numels, dtype=torch.int64)
        rows[:, 6] = torch.tensor(firsts, dtype=torch.int64)
        host[n * ROW :] = torch.repeat_interleave(
            torch.arange(n, dtype=torch.int64), torch.tensor(blocks_per_tensor)
        )
        if device.type == "cpu":
            table = host
        else:
            # Pinned, so that the copy is asynchronous and the step never waits for the GPU.
            host = host.pin_memory()
            table = host.to(device, non_blocking=True)
        self._host = host  # alive as long as the tables: a captured graph replays the copy
        self.rows = table[: n * ROW]
        self.owners = table[n * ROW :]
        self.aligned = all(a % 16 == 0 for column in addresses[:4] for a in column)


def fused_yogi(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    beta1: float,
    beta2: float,
    lr: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    capturable: bool,
    tables: FusedTables | None = None,
) -> None:
    """Yogi's step with one kernel launch per device and dtype. ``state_steps`` are float32
    tensors on the parameters' device, incremented here. ``tables`` caches the kernel's tables
    from step to step; graph capture needs it."""
    if not params:
        return
    grouped = torch.optim.Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, exp_avgs, exp_avg_sqs, state_steps]  # type: ignore[list-item]
    )
    for (device, dtype), (tensors, _) in grouped.items():
        lists = [list(t) for t in tensors]  # type: ignore[arg-type]
        check_fused_param(lists[0][0])
        if lists[4][0].device != device:
            raise RuntimeError(
                "Yogi(fused=True) keeps its step counts on the parameters' device, but got one "
                f"on {lists[4][0].device} for parameters on {device}"
            )
        capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        if capturing and not (capturable and tables is not None):
            raise RuntimeError(
                "Attempting CUDA graph capture of Yogi's step, but capturable is False; "
                "build it with Yogi(..., fused=True, capturable=True)"
            )
        write_back = _make_contiguous(lists)
        torch._foreach_add_(lists[4], 1.0)
        cache = tables if tables is not None else FusedTables(capacity=0)
        table = cache.get(lists, capturing=capturing)
        _kernel(_interpreting())[(table.blocks,)](
            table.rows,
            table.owners,
            # Python floats, so that Triton types them float32 whatever the caller passed (an
            # int would be typed int32, and 1 specialized into a constant).
            float(lr),
            1.0 - float(beta1),
            1.0 - float(beta2),
            float(eps),
            float(weight_decay),
            MAXIMIZE=maximize,
            WEIGHT_DECAY=weight_decay != 0,
            ALIGNED=table.aligned,
            DTYPE=_TRITON_DTYPES[dtype],
            ROW=ROW,
            BLOCK=BLOCK,
            num_warps=NUM_WARPS,
            # Contract a*b + c into one FMA, as nvcc does for torch's own CUDA kernels. Said
            # explicitly: Triton 3.9 warns when the default is left to it.
            enable_fp_fusion=True,
        )
        for original, updated in write_back:
            original.copy_(updated)


def _make_contiguous(lists: list[list[Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """Replace strided tensors in ``lists`` by contiguous copies, since the kernel walks each
    tensor's storage from its first value; returns the (original, copy) pairs to write back
    (the gradients are only read)."""
    write_back = []
    for column, tensors in enumerate(lists[:4]):
        if all(map(Tensor.is_contiguous, tensors)):
            continue
        for i, t in enumerate(tensors):
            if not t.is_contiguous():
                tensors[i] = t.contiguous()
                if column != 1:
                    write_back.append((t, tensors[i]))
    return write_back
