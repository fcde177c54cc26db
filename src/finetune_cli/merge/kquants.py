"""Q4_K and Q6_K quantizers in numpy: gguf-py 0.19 dequantizes K-quants but cannot write them.

    raw = quantize_q4_k(w)        # w: float32 (rows, cols), cols % 256 == 0 -> uint8 (rows, cols/256*144)
    raw = quantize_q6_k(w)        # -> uint8 (rows, cols/256*210)

Ports of llama.cpp's reference quantizers (``quantize_row_q4_K_ref`` / ``quantize_row_q6_K_ref`` in
ggml-quants.c, used by ``llama-quantize`` when no importance matrix is given), vectorized over all
blocks at once: ``make_qkx2_quants`` (Q4_K: per 32-weight sub-block, a scale and a min fitted by a
weighted least-squares search over 21 candidate scales) and ``make_qx_quants`` (Q6_K: per 16-weight
sub-block, a symmetric scale searched over 19 candidates), then the sub-block scales quantized to 6/8
bits against one fp16 super-block scale. The byte layout is the one gguf-py's dequantizers read
(tested by round trip). Rounding is round-half-to-even, as llama.cpp's ``nearest_int``.
"""

from __future__ import annotations

import numpy as np

QK_K = 256


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def _make_qkx2_quants(x: np.ndarray, w: np.ndarray, nmax: int = 15, rmin: float = -1.0, rdelta: float = 0.1,
                      nstep: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric quants of each row of ``x`` (n, 32): (levels uint8 0..nmax, scale, -min) per row."""
    xmin = np.minimum(x.min(axis=1), 0.0)
    xmax = x.max(axis=1)
    rng = xmax - xmin
    flat = rng <= 0
    rng = np.where(flat, 1.0, rng)
    sum_w = w.sum(axis=1)
    sum_x = (w * x).sum(axis=1)

    iscale = nmax / rng
    scale = 1.0 / iscale
    levels = np.clip(np.rint(iscale[:, None] * (x - xmin[:, None])), 0, nmax)
    best = (w * (scale[:, None] * levels + xmin[:, None] - x) ** 2).sum(axis=1)
    best_min = xmin.copy()
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * step + nmax) / rng
        lv = np.clip(np.rint(iscale[:, None] * (x - xmin[:, None])), 0, nmax)
        sum_l = (w * lv).sum(axis=1)
        sum_l2 = (w * lv * lv).sum(axis=1)
        sum_xl = (w * lv * x).sum(axis=1)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = det > 0
        safe = np.where(ok, det, 1.0)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / safe
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / safe
        pos = this_min > 0
        this_scale = np.where(pos, sum_xl / np.where(sum_l2 > 0, sum_l2, 1.0), this_scale)
        this_min = np.where(pos, 0.0, this_min)
        err = (w * (this_scale[:, None] * lv + this_min[:, None] - x) ** 2).sum(axis=1)
        better = ok & (err < best)
        levels = np.where(better[:, None], lv, levels)
        best = np.where(better, err, best)
        scale = np.where(better, this_scale, scale)
        best_min = np.where(better, this_min, best_min)
    scale = np.where(flat, 0.0, scale)
    levels = np.where(flat[:, None], 0, levels)
    return levels.astype(np.uint8), scale.astype(np.float32), (-best_min).astype(np.float32)


def quantize_q4_k(w: np.ndarray) -> np.ndarray:
    """Q4_K: 256-weight super-blocks = fp16 d, fp16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles."""
    rows, cols = w.shape
    assert cols % QK_K == 0, cols
    nb = rows * cols // QK_K
    x = w.astype(np.float32).reshape(nb, 8, 32)
    sub = x.reshape(nb * 8, 32)
    av_x = np.sqrt((sub * sub).mean(axis=1, keepdims=True))
    weights = av_x + np.abs(sub)
    levels, scales, mins = _make_qkx2_quants(sub, weights)
    scales = scales.reshape(nb, 8)
    mins = mins.reshape(nb, 8)
    levels = levels.reshape(nb, 8, 32)

    max_scale = scales.max(axis=1)
    max_min = mins.max(axis=1)
    inv_scale = np.where(max_scale > 0, 63.0 / np.where(max_scale > 0, max_scale, 1), 0.0)
    inv_min = np.where(max_min > 0, 63.0 / np.where(max_min > 0, max_min, 1), 0.0)
    ls = np.minimum(63, np.rint(inv_scale[:, None] * scales)).astype(np.uint8)
    lm = np.minimum(63, np.rint(inv_min[:, None] * mins)).astype(np.uint8)
    d = _f16(max_scale / 63.0)
    dmin = _f16(max_min / 63.0)

    # levels again against the quantized scales (where a sub-block's scale is not zero)
    sd = d[:, None] * ls.astype(np.float32)
    sm = dmin[:, None] * lm.astype(np.float32)
    nz = sd > 0
    requant = np.clip(np.rint((x + sm[..., None]) / np.where(nz, sd, 1.0)[..., None]), 0, 15).astype(np.uint8)
    levels = np.where(nz[..., None], requant, levels)

    packed = np.zeros((nb, 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)

    lv = levels.reshape(nb, 4, 2, 32)  # pairs of sub-blocks share bytes: low nibble, high nibble
    qs = (lv[:, :, 0, :] | (lv[:, :, 1, :] << 4)).reshape(nb, 128)
    out = np.concatenate([d.astype(np.float16).view(np.uint8).reshape(nb, 2),
                          dmin.astype(np.float16).view(np.uint8).reshape(nb, 2), packed, qs], axis=1)
    return out.reshape(rows, cols // QK_K * 144)


def _make_qx_quants(x: np.ndarray, nmax: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric quants of each row of ``x`` (n, 16), weights x²: (levels int -nmax..nmax-1, scale)."""
    idx = np.abs(x).argmax(axis=1)
    vmax = x[np.arange(x.shape[0]), idx]
    zero = np.abs(vmax) < 1e-15
    vmax = np.where(zero, 1.0, vmax)
    w = x * x

    def attempt(iscale):
        lv = np.clip(np.rint(iscale[:, None] * x), -nmax, nmax - 1)
        return lv, (w * x * lv).sum(axis=1), (w * lv * lv).sum(axis=1)

    levels, sumlx, suml2 = attempt(-nmax / vmax)
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, 1), 0.0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        lv, sumlx, suml2 = attempt(-(nmax + 0.1 * step) / vmax)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        new_scale = sumlx / np.where(suml2 > 0, suml2, 1)
        levels = np.where(better[:, None], lv, levels)
        scale = np.where(better, new_scale, scale)
        best = np.where(better, new_scale * sumlx, best)
    scale = np.where(zero, 0.0, scale)
    levels = np.where(zero[:, None], 0, levels)
    return levels.astype(np.int32), scale.astype(np.float32)


def quantize_q6_k(w: np.ndarray) -> np.ndarray:
    """Q6_K: 256-weight super-blocks = 128 bytes low nibbles, 64 bytes high 2 bits, 16 int8 scales, fp16 d."""
    rows, cols = w.shape
    assert cols % QK_K == 0, cols
    nb = rows * cols // QK_K
    x = w.astype(np.float32).reshape(nb, 16, 16)
    _, scales = _make_qx_quants(x.reshape(nb * 16, 16))
    scales = scales.reshape(nb, 16)
    pick = np.abs(scales).argmax(axis=1)
    max_scale = scales[np.arange(nb), pick]
    zero = np.abs(max_scale) < 1e-15
    iscale = np.where(zero, 0.0, -128.0 / np.where(zero, 1.0, max_scale))
    ls = np.minimum(127, np.rint(iscale[:, None] * scales)).astype(np.int8)
    d = _f16(np.where(zero, 0.0, 1.0 / np.where(zero, 1.0, iscale)))

    sd = d[:, None] * ls.astype(np.float32)
    nz = sd != 0
    lv = np.clip(np.rint(x / np.where(nz, sd, 1.0)[..., None]), -32, 31) + 32
    lv = np.where(nz[..., None], lv, 32).astype(np.uint8).reshape(nb, 2, 4, 32)  # halves of 128, 4 rows of 32

    ql = np.empty((nb, 2, 64), dtype=np.uint8)
    ql[:, :, 0:32] = (lv[:, :, 0] & 0xF) | ((lv[:, :, 2] & 0xF) << 4)
    ql[:, :, 32:64] = (lv[:, :, 1] & 0xF) | ((lv[:, :, 3] & 0xF) << 4)
    qh = (lv[:, :, 0] >> 4) | ((lv[:, :, 1] >> 4) << 2) | ((lv[:, :, 2] >> 4) << 4) | ((lv[:, :, 3] >> 4) << 6)
    out = np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64), ls.view(np.uint8),
                          d.astype(np.float16).view(np.uint8).reshape(nb, 2)], axis=1)
    return out.reshape(rows, cols // QK_K * 210)
