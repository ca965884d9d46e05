"""Yogi(fused=True), the Triton kernel (ISSUE 12), checked against the single-tensor path.

Without a GPU the kernel runs in Triton's CPU interpreter (``TRITON_INTERPRET=1``): the same
kernel source, executed with numpy. On a GPU the CUDA tests run the compiled kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.test_yogi import clone, saved_and_loaded
from tuner.catalog.optim import Yogi

triton = pytest.importorskip(
    "triton", reason="Triton is not installed (it is in the test extras on Linux)"
)

# Sizes that cover a one-value tensor, several tensors per launch, and a tensor of more than one
# block (4097 values: a full block, unmasked, then a masked one of one value).
SHAPES = [(3, 4), (5,), (2, 3, 2), (1,), (4097,)]


@pytest.fixture
def interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def make_params(device: str = "cpu") -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen).to(device).requires_grad_() for s in SHAPES]


def step_gradients(step: int, device: str = "cpu") -> list[torch.Tensor]:
    """Gradients whose scale swings by 100x every 5 steps, so both signs of v - g² occur."""
    gen = torch.Generator().manual_seed(1000 + step)
    scale = 1.0 if step % 10 < 5 else 0.01
    return [(scale * torch.randn(s, generator=gen)).to(device) for s in SHAPES]


def groups(params: list[torch.Tensor]) -> list[dict]:
    """Three parameter groups: weight decay and maximize, other betas, and neither."""
    return [
        {"params": params[:2], "lr": 1e-2, "weight_decay": 1e-2, "maximize": True},
        {"params": params[2:4], "lr": 3e-2, "betas": (0.8, 0.99), "weight_decay": 0.1},
        {"params": params[4:], "lr": 5e-3, "eps": 1e-4},
    ]


def run_side_by_side(reference: Yogi, fused: Yogi, ref_params, fused_params, steps: int) -> None:
    for t in range(1, steps + 1):
        for ref_p, fused_p, g in zip(ref_params, fused_params, step_gradients(t), strict=True):
            # The (2, 3, 2) tensor gets no gradient for the first 3 steps: its step count lags
            # the others', so the kernel's per-tensor bias corrections differ within a launch.
            skip = ref_p is ref_params[2] and t <= 3
            ref_p.grad = None if skip else g.to(ref_p.device)
            fused_p.grad = None if skip else g.to(fused_p.device)
        reference.step()
        fused.step()


def assert_params_close(expected: list[torch.Tensor], got: list[torch.Tensor]) -> None:
    for want, have in zip(expected, got, strict=True):
        # float32 rounding: the two paths order a few operations differently.
        torch.testing.assert_close(have.detach().cpu(), want.detach().cpu(), rtol=1e-6, atol=1e-6)


# capturable only changes what graph capture allows, so fewer steps check it (the interpreter
# takes about 0.1 s per step here).
@pytest.mark.parametrize(("capturable", "steps"), [(False, 100), (True, 20)])
def test_fused_matches_single_tensor(interpreter: None, capturable: bool, steps: int) -> None:
    params = make_params()
    single, fused = clone(params), clone(params)
    opt_single = Yogi(groups(single), foreach=False)
    opt_fused = Yogi(groups(fused), fused=True, capturable=capturable)
    run_side_by_side(opt_single, opt_fused, single, fused, steps=steps)

    assert opt_fused.state[fused[2]]["step"].item() == steps - 3
    for p, before in zip(fused, params, strict=True):
        assert not torch.equal(p, before)
    assert_params_close(single, fused)
    for p_single, p_fused in zip(single, fused, strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(
                opt_fused.state[p_fused][key], opt_single.state[p_single][key], rtol=1e-6, atol=1e-7
            )


def test_fused_updates_strided_parameters(interpreter: None) -> None:
    """A transposed (non-contiguous) parameter goes through a contiguous copy, written back."""
    base = torch.randn(4, 3)
    single = [base.clone().t().requires_grad_()]
    fused = [base.clone().t().requires_grad_()]
    assert not fused[0].is_contiguous()
    opt_single, opt_fused = Yogi(single, foreach=False), Yogi(fused, fused=True)
    for t in range(1, 11):
        grad = torch.randn(4, 3, generator=torch.Generator().manual_seed(t)).t()
        single[0].grad, fused[0].grad = grad.clone(), grad.clone()
        opt_single.step()
        opt_fused.step()
    assert_params_close(single, fused)


def test_fused_state_dict_loads_into_the_foreach_path_and_back(interpreter: None) -> None:
    params = make_params()
    fused, single = clone(params), clone(params)
    opt_fused, opt_single = Yogi(fused, fused=True), Yogi(single, foreach=False)
    run_side_by_side(opt_single, opt_fused, single, fused, steps=5)

    # fused -> foreach: the step counts come back as tensors the foreach path can read.
    resumed = clone(fused)
    opt_resumed = Yogi(resumed, foreach=True)
    opt_resumed.load_state_dict(saved_and_loaded(opt_fused.state_dict()))
    # foreach -> fused: the CPU step counts move to the parameters' device at the first step.
    refused = clone(single)
    opt_refused = Yogi(refused, fused=True)
    opt_refused.load_state_dict(saved_and_loaded(opt_single.state_dict()))
    for t in range(6, 11):
        grads = step_gradients(t)
        for group in (resumed, refused, single):
            for p, g in zip(group, grads, strict=True):
                p.grad = g.clone()
        opt_resumed.step()
        opt_refused.step()
        opt_single.step()
    assert opt_refused.state[refused[0]]["step"].item() == 10
    assert_params_close(single, resumed)
    assert_params_close(single, refused)


def test_fused_tables_are_reused_while_addresses_hold(interpreter: None) -> None:
    params = make_params()
    optimizer = Yogi(params, fused=True)
    grads = step_gradients(1)
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    for _ in range(3):
        optimizer.step()
    assert optimizer._fused_tables is not None
    assert len(optimizer._fused_tables) == 1  # the same gradient tensors: one build
    kept = []  # alive, so that every step's gradients have new addresses
    for t in range(2, 20):
        kept.append(step_gradients(t))
        for p, g in zip(params, kept[-1], strict=True):
            p.grad = g  # new addresses: the tables are built again, and the cache stays bounded
        optimizer.step()
    assert len(optimizer._fused_tables) == optimizer._fused_tables.capacity


def test_fused_on_cpu_without_the_interpreter_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match=r"runs on CUDA tensors, but got a parameter on cpu"):
        Yogi([torch.zeros(2, requires_grad=True)], fused=True)


def test_fused_rejects_float64_parameters(interpreter: None) -> None:
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"float32, float16 and bfloat16 .* torch.float64"):
        Yogi([p], fused=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fused": True, "foreach": True}, "`fused` and `foreach` cannot be `True` together"),
        ({"capturable": True}, "`capturable=True` only with `fused=True`"),
    ],
)
def test_fused_flag_conflicts_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Yogi([torch.zeros(2, requires_grad=True)], **kwargs)


def test_fused_without_triton_says_so(tmp_path: Path) -> None:
    """A real interpreter where ``import triton`` fails, as on a machine without Triton: a
    package of that name, first on the path, that raises ImportError."""
    fake = tmp_path / "triton"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no Triton on this machine')\n")
    code = textwrap.dedent(
        """
        import torch
        from tuner.catalog.optim import Yogi
        Yogi([torch.zeros(2, requires_grad=True)])  # fused=False never needs Triton
        try:
            Yogi([torch.zeros(2, requires_grad=True)], fused=True)
        except RuntimeError as error:
            print(error)
        """
    )
    paths = [str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")]
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Yogi(fused=True) needs Triton, which did not import (no Triton on this machine)" in (
        result.stdout
    )


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("capturable", [False, True])
def test_cuda_fused_matches_single_tensor_for_100_steps(
    monkeypatch: pytest.MonkeyPatch, capturable: bool
) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    params = make_params()
    single, fused = clone(params, "cuda"), clone(params, "cuda")
    opt_single = Yogi(groups(single), foreach=False)
    opt_fused = Yogi(groups(fused), fused=True, capturable=capturable)
    run_side_by_side(opt_single, opt_fused, single, fused, steps=100)
    assert_params_close(single, fused)


@needs_cuda
def test_cuda_graph_replays_the_fused_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    params = make_params()
    eager, graphed = clone(params, "cuda"), clone(params, "cuda")
    grads = [g.cuda() for g in step_gradients(1)]
    for p_eager, p_graphed, g in zip(eager, graphed, grads, strict=True):
        p_eager.grad, p_graphed.grad = g.clone(), g.clone()
    opt_eager = Yogi(eager, fused=True)
    opt_graphed = Yogi(graphed, fused=True, capturable=True)

    # Warm up on a side stream (the kernel compiles and the state is created), then capture.
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            opt_graphed.step()
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(3):
        opt_eager.step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt_graphed.step()
    for _ in range(10):
        graph.replay()
        opt_eager.step()
    torch.cuda.synchronize()
    assert opt_graphed.state[graphed[0]]["step"].item() == 13
    assert_params_close(eager, graphed)


@needs_cuda
def test_cuda_graph_capture_without_capturable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    p = torch.zeros(8, device="cuda", requires_grad=True)
    p.grad = torch.ones(8, device="cuda")
    optimizer = Yogi([p], fused=True)
    optimizer.step()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="capturable is False"), torch.cuda.graph(graph):
        optimizer.step()


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_fused_half_precision_tracks_float32(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    """Half-precision parameters are updated in float32 arithmetic and stored back."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    params = make_params()
    full = clone(params, "cuda")
    half = [p.detach().to("cuda", dtype).requires_grad_() for p in params]
    opt_full, opt_half = Yogi(full, fused=True), Yogi(half, fused=True)
    for t in range(1, 21):
        for p_full, p_half, g in zip(full, half, step_gradients(t), strict=True):
            p_full.grad, p_half.grad = g.cuda(), g.to("cuda", dtype)
        opt_full.step()
        opt_half.step()
    for a, b in zip(full, half, strict=True):
        torch.testing.assert_close(b.float(), a, rtol=2e-2, atol=2e-2)


def test_catalog_builds_the_usual_optimizer_off_cuda() -> None:
    """``fused=True`` asks for speed, not another update: on CPU the catalog ignores it, so one
    objective runs on CPU and GPU workers alike."""
    from tuner.catalog.optim import get_optimizer

    for name in ("yogi", "adam", "sgd"):
        spec = get_optimizer(name)
        optimizer = spec.build(
            torch.nn.Linear(2, 1).parameters(), spec.to_kwargs(spec.defaults()), fused=True
        )
        assert not optimizer.param_groups[0].get("fused")


@needs_cuda
@pytest.mark.parametrize("name", ["yogi", "adam", "adamw"])
def test_catalog_builds_fused_on_cuda(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from tuner.catalog.export import build_optimizer

    model = torch.nn.Linear(4, 2).cuda()
    optimizer, _ = build_optimizer(model.parameters(), {"optimizer": name}, 10, fused=True)
    assert optimizer.param_groups[0]["fused"] is True
    model(torch.ones(3, 4, device="cuda")).sum().backward()
    optimizer.step()


def compile_for_hopper(**constexprs: object) -> str:
    """The kernel compiled for sm_90 (an H100/H200) without a GPU: Triton's compiler and the
    ptxas it ships run on any x86-64 machine. Returns the PTX."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from tuner.catalog.optim import _yogi_fused

    kernel = _yogi_fused._kernel(False)
    scalars = ("lr", "one_minus_beta1", "one_minus_beta2", "eps", "weight_decay")
    signature = {
        "rows": "*i64",
        "owners": "*i64",
        **dict.fromkeys(scalars, "fp32"),
        **dict.fromkeys(constexprs, "constexpr"),
    }
    source = ASTSource(
        fn=kernel,
        signature=signature,
        constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()},
    )
    options = {"num_warps": _yogi_fused.NUM_WARPS, "enable_fp_fusion": True}
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]


@pytest.mark.parametrize(
    ("dtype", "maximize", "weight_decay"),
    [("float32", False, True), ("bfloat16", True, False), ("float16", False, False)],
)
def test_kernel_compiles_for_hopper_with_wide_loads(
    monkeypatch: pytest.MonkeyPatch, dtype: str, maximize: bool, weight_decay: bool
) -> None:
    """The compiled path, checked without a GPU: the kernel builds for sm_90, full blocks move
    128 bits per load and store (the alignment hint reaches them), and sqrt and division are
    the correctly rounded ones the single-tensor path uses."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ptx = compile_for_hopper(
        MAXIMIZE=maximize,
        WEIGHT_DECAY=weight_decay,
        ALIGNED=True,
        DTYPE=getattr(triton.language, dtype),
        ROW=8,
        BLOCK=4096,
    )
    assert ".target sm_90" in ptx
    assert "ld.global.v4" in ptx
    assert "st.global.v4" in ptx
    assert "sqrt.rn.f32" in ptx
    assert "div.rn.f32" in ptx
    assert "sqrt.approx.f32" not in ptx
