"""The Triton kernels behind :mod:`dpplat.engine.rules.linear_triton`, imported on first use, so that Triton reads
``TRITON_INTERPRET`` (compiled on a GPU, interpreted on the CPU) when they are defined."""

import triton
import triton.language as tl


@triton.jit
def load_tiles(a_ptr, g_ptr, n, t0, offs_p, offs_q, T, P, Q, stride_an, stride_at, stride_gn, stride_gt,
               BT: tl.constexpr):
    """Sample n's rows t0 .. t0 + BT of G (columns offs_q) and of A (columns offs_p), zero outside."""
    offs_t = t0 + tl.arange(0, BT)
    g = tl.load(g_ptr + n * stride_gn + offs_t[:, None] * stride_gt + offs_q[None, :],
                mask=(offs_t[:, None] < T) & (offs_q[None, :] < Q), other=0.0)
    a = tl.load(a_ptr + n * stride_an + offs_t[:, None] * stride_at + offs_p[None, :],
                mask=(offs_t[:, None] < T) & (offs_p[None, :] < P), other=0.0)
    return g, a


@triton.jit
def norm_kernel(a_ptr, g_ptr, out_ptr, T, P, Q,
                stride_an, stride_at, stride_gn, stride_gt,
                BT: tl.constexpr, BP: tl.constexpr, BQ: tl.constexpr):
    n, tile_q, tile_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_q = tile_q * BQ + tl.arange(0, BQ)
    offs_p = tile_p * BP + tl.arange(0, BP)
    acc = tl.zeros((BQ, BP), dtype=out_ptr.dtype.element_ty)
    for t0 in range(0, T, BT):
        g, a = load_tiles(a_ptr, g_ptr, n, t0, offs_p, offs_q, T, P, Q, stride_an, stride_at, stride_gn,
                          stride_gt, BT)
        acc += tl.dot(tl.trans(g), a, input_precision="ieee")
    tiles_q, tiles_p = tl.num_programs(1), tl.num_programs(2)
    tl.store(out_ptr + (n * tiles_q + tile_q) * tiles_p + tile_p, tl.sum(acc * acc))


@triton.jit
def sum_kernel(a_ptr, g_ptr, f_ptr, out_ptr, N, T, P, Q,
               stride_an, stride_at, stride_gn, stride_gt,
               BT: tl.constexpr, BP: tl.constexpr, BQ: tl.constexpr):
    tile_q, tile_p = tl.program_id(0), tl.program_id(1)
    offs_q = tile_q * BQ + tl.arange(0, BQ)
    offs_p = tile_p * BP + tl.arange(0, BP)
    acc = tl.zeros((BQ, BP), dtype=out_ptr.dtype.element_ty)
    for n in range(0, N):
        factor = tl.load(f_ptr + n)
        for t0 in range(0, T, BT):
            g, a = load_tiles(a_ptr, g_ptr, n, t0, offs_p, offs_q, T, P, Q, stride_an, stride_at, stride_gn,
                              stride_gt, BT)
            acc += tl.dot(tl.trans(g * factor), a, input_precision="ieee")
    tl.store(out_ptr + offs_q[:, None] * P + offs_p[None, :], acc,
             mask=(offs_q[:, None] < Q) & (offs_p[None, :] < P))
