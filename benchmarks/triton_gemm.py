"""Which way of writing a 3xTF32 GEMM in Triton runs fastest on this GPU (a probe for
`bilens.triton_ops`), against cuBLAS on split factors. Both ablation GEMM shapes:
`[M, d] @ [d, 2H]` (the L/R product) and `[M, H] @ [H, d]` (the D product).

    python benchmarks/triton_gemm.py            # CUDA only

Modes: rs (activation split in registers, the A operand), ss (halves stored in memory,
loaded like the weights), trans (C^T = W^T X^T: the split activation is the B operand),
x3 (Triton's own input_precision="tf32x3"), tf32 (one unsplit TF32 product, the ceiling).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

from bilens.ablation._engine.steps import round_tf32, split_cols, split_rows
from bilens.ablation._engine.triton_ops import _split  # the kernels' own TF32 split

CONFIGS = [triton.Config({"BM": bm, "BN": bn, "BK": bk}, num_warps=w, num_stages=s)
           for bm, bn, bk, w, s in [(128, 128, 32, 8, 3), (128, 256, 32, 8, 2), (128, 64, 32, 4, 4),
                                    (64, 128, 32, 4, 4), (256, 128, 32, 8, 2),
                                    (128, 128, 64, 8, 2)]]


@triton.autotune(configs=CONFIGS, key=["M", "N", "K", "MODE"])
@triton.jit
def _mm(x_ptr, xl_ptr, wh_ptr, wl_ptr, c_ptr, M, N, K, MODE: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid = tl.program_id(0)
    nt = tl.cdiv(N, BN)
    rm = (pid // nt) * BM + tl.arange(0, BM)
    rn = (pid % nt) * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        xo = rm[:, None].to(tl.int64) * K + rk[None, :]
        wo = rk[:, None] * N + rn[None, :]
        wh = tl.load(wh_ptr + wo)
        if MODE == 0:
            xh, xl = _split(tl.load(x_ptr + xo))
            acc = tl.dot(xl, wh, acc, input_precision="tf32")
            acc = tl.dot(xh, tl.load(wl_ptr + wo), acc, input_precision="tf32")
            acc = tl.dot(xh, wh, acc, input_precision="tf32")
        if MODE == 1:
            xh = tl.load(x_ptr + xo)
            acc = tl.dot(tl.load(xl_ptr + xo), wh, acc, input_precision="tf32")
            acc = tl.dot(xh, tl.load(wl_ptr + wo), acc, input_precision="tf32")
            acc = tl.dot(xh, wh, acc, input_precision="tf32")
        if MODE == 3:
            acc = tl.dot(tl.load(x_ptr + xo), wh, acc, input_precision="tf32x3")
        if MODE == 4:
            acc = tl.dot(tl.load(x_ptr + xo), wh, acc, input_precision="tf32")
    tl.store(c_ptr + rm[:, None].to(tl.int64) * N + rn[None, :], acc)


@triton.autotune(configs=CONFIGS, key=["M", "N", "K"])
@triton.jit
def _mm_t(x_ptr, whT_ptr, wlT_ptr, c_ptr, M, N, K,
          BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """acc^T [BN, BM] = W^T [BN, BK] @ X^T [BK, BM]; weights given transposed ([N, K])."""
    pid = tl.program_id(0)
    nt = tl.cdiv(N, BN)
    rm = (pid // nt) * BM + tl.arange(0, BM)
    rn = (pid % nt) * BN + tl.arange(0, BN)
    acc = tl.zeros((BN, BM), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        xh, xl = _split(tl.load(x_ptr + rm[:, None].to(tl.int64) * K + rk[None, :]))
        wo = rn[:, None] * K + rk[None, :]
        wh = tl.load(whT_ptr + wo)
        acc = tl.dot(wh, tl.trans(xl), acc, input_precision="tf32")
        acc = tl.dot(tl.load(wlT_ptr + wo), tl.trans(xh), acc, input_precision="tf32")
        acc = tl.dot(wh, tl.trans(xh), acc, input_precision="tf32")
    tl.store(c_ptr + rm[None, :].to(tl.int64) * N + rn[:, None], acc)


def probe(M: int, K: int, N: int) -> None:
    x = torch.randn(M, K, device="cuda")
    w = torch.randn(K, N, device="cuda") / K**0.5
    ref = (x.double() @ w.double())
    scale = ref.abs().max().item()
    wh = round_tf32(w)
    wl = round_tf32(w - wh)
    xh = round_tf32(x)
    xl = x - xh
    flops3 = 3 * 2 * M * N * K
    print(f"M={M} K={K} N={N}")

    def report(name, fn, flops=flops3):
        out = fn()
        err = (out.double() - ref).abs().max().item() / scale
        ms = do_bench(fn, warmup=5, rep=50)
        print(f"  {name:28} {ms:8.3f} ms  {flops / ms / 1e9:7.1f} TFLOP/s (TF32)  err {err:.1e}",
              flush=True)

    c = torch.empty(M, N, device="cuda")
    grid = lambda meta: (triton.cdiv(M, meta["BM"]) * triton.cdiv(N, meta["BN"]),)  # noqa: E731
    modes = [(0, "triton rs"), (1, "triton ss"), (3, "triton x3"), (4, "triton tf32 (1 pass)")]
    for mode, name in modes:
        def fn(mode=mode):
            _mm[grid](xh if mode == 1 else x, xl, wh, wl, c, M, N, K, MODE=mode)
            return c
        try:
            report(name, fn, flops3 if mode != 4 else flops3 / 3)
        except Exception as err:  # noqa: BLE001
            print(f"  {name:28} failed: {type(err).__name__}: {str(err)[:200]}")
    whT, wlT = wh.T.contiguous(), wl.T.contiguous()

    def fn_t():
        _mm_t[grid](x, whT, wlT, c, M, N, K)
        return c
    try:
        report("triton trans", fn_t)
    except Exception as err:  # noqa: BLE001
        print(f"  triton trans failed: {type(err).__name__}: {str(err)[:200]}")
    xs = split_rows(x)
    w2, w_lo = split_cols(w)
    torch.backends.cuda.matmul.allow_tf32 = True

    def fn_cublas():
        out = xs @ w2
        return out.addmm_(xs[:, :K], w_lo)
    report("cublas split (x pre-split)", fn_cublas)
    report("cublas tf32 (1 pass)", lambda: x @ w, flops3 / 3)
    torch.backends.cuda.matmul.allow_tf32 = False
    report("cublas fp32", lambda: x @ w)


def main() -> None:
    torch.manual_seed(0)
    for M, K, N in [(262144, 256, 2048), (262144, 1024, 256)]:
        probe(M, K, N)


if __name__ == "__main__":
    main()
