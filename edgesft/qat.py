"""Quantization-aware healing: the export format's own rounding, simulated in the healing forward pass.

While the prune stage heals (:func:`edgesft.training.fit`), every weight the chosen export format quantizes
is replaced in the forward pass by ``dequant(quant(w))``, computed the way that format's quantizer computes
it, and the backward pass hands the gradient straight to the float weight (straight-through estimator). The
optimizer keeps updating the float ("latent") weights; the saved model holds them, and the exporter, which
quantizes them again, lands on the grid that training saw.

Formats (:data:`FORMATS`):

* ``q4_0`` and ``q4_k_m``: the GGUF file llama.cpp's quantizer writes (llama-cpp-python 0.3.36, whose
  ``ggml-quants.c`` and ``llama-quant.cpp`` this module follows), as the gguf stage calls it: from the F16
  float file, with an importance matrix. That quantizer does not round one way for a whole file. It picks a
  type per tensor (:func:`gguf_tensor_type`, :func:`plan`): Q4_0 files keep the output tensor (the tied embedding) at Q6_K,
  or Q8_0 when its rows are not a multiple of 256, and with an importance matrix make the first eighth of
  ``ffn_down`` Q4_1; Q4_K_M gives half of ``attn_v``/``ffn_down`` Q6_K, and every tensor whose rows are not a
  multiple of 256 falls back (Q4_K -> Q5_0, Q6_K -> Q8_0: SmolLM2's 576-wide rows). With an importance matrix
  a 32-weight block's scale is not ``max / -8``: ``make_qx_quants`` tries 19 scales and keeps the one of
  least importance-weighted squared error, and Q4_K fits a scale and a minimum per sub-block by weighted
  least squares (``make_qkx3_quants``) and then quantizes those to 6 bits (``make_qp_quants``). Every one of
  these is implemented here, each checked against the quantizer itself in ``tests/test_qat.py``.
* ``int4``: onnxruntime's MatMulNBits round-to-nearest, which the ONNX builder's ``algorithm: rtn`` uses (MLAS
  ``quantize_matmul_4bits``): blocks along the input dimension, symmetric ``scale = max / -8`` with the sign
  of the largest magnitude and C ``roundf`` (ties away from zero) on ``w / scale + 8``, or asymmetric with a
  zero point; fp32 scales. A tied embedding shares the LM head's int4 table (``quantize_embedding``); an
  untied one is quantized by the quantizer's numpy path (ties to even).

The scale searches are too costly to run on every forward pass of a CPU training step (19 candidate scales
for every block of the model, 37 for Q4_K). So each block's choice among the candidates (which candidate
scale won) is searched at the start of healing and again every ``refresh_steps`` optimizer steps, together
with the importance matrix (re-measured on the student as the gguf stage measures it: float weights, the
same training rows); between refreshes each step quantizes with that choice, llama.cpp's result for as
long as the choice still wins (but for an fp16 scale that rounds the other way in a few blocks in a
thousand: the per-step path sums in torch's order). Both refreshes depend only on the weights at a step that
is a multiple of ``refresh_steps``, so a run resumed from a checkpoint at such a step quantizes as the run it
resumes. Only weights are simulated: the runtimes' own activation rounding (llama.cpp's Q8_0 dot products,
MatMulNBits' ``accuracy_level`` 4) is not, and under bf16 autocast the simulated weights are rounded to bf16
like every other weight.

Why this module and not torchao's QAT (``IntXQuantizationAwareTrainingConfig`` / ``FakeQuantizeConfig``):
torchao's int4 fake quantization picks its scale as ``choose_qparams_affine`` does, symmetric ``max |w| /
7.5`` over levels ``[-8, 7]`` (or a min/max zero-point scheme) with round-half-to-even, per group. llama.cpp's
Q4_0 instead maps the signed largest weight to -8 (``d = max / -8``) and truncates ``w / d + 8.5``, and with
an importance matrix searches 19 scales per block; its files mix several types; MLAS's int4 is ``max / -8``
with C ``roundf`` on ``w / scale + 8``. No export format here is torchao's grid, so adding it (a dependency
pinned to torch releases) would not have saved writing these rules, each checked against its quantizer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from edgesft.errors import EdgesftError

FORMATS = ("q4_0", "q4_k_m", "int4")

_EPS = 1e-15  # GROUP_MAX_EPS: a block whose largest magnitude is below this is all zero
QK_K = 256  # super-block of the k-quants

# ggml block sizes of the types llama.cpp's Q4_0 and Q4_K_M files hold (ggml.c's type traits)
GGML_BLOCK = {
    "Q4_0": 32,
    "Q4_1": 32,
    "Q5_0": 32,
    "Q8_0": 32,
    "Q4_K": QK_K,
    "Q6_K": QK_K,
    "F16": 1,
}
# tensor_type_fallback: a type whose block does not divide the row length
_FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}
# the type each file type starts every tensor from (llama_model_quantize's default_type)
_DEFAULT_TYPE = {"q4_0": "Q4_0", "q4_k_m": "Q4_K"}


# --------------------------------------------------------------------------------------------------------
# Rounding primitives (ggml-quants.c, float32 throughout)


def _f16(t: Any) -> Any:
    """A float32 tensor through fp16 and back: a scale as the block stores it (GGML_FP32_TO_FP16)."""
    import torch

    return t.to(torch.float16).to(torch.float32)


def _sqrtf(t: Any) -> Any:
    """C ``sqrtf``, correctly rounded: torch's vectorized float32 sqrt is off by an ulp on some inputs, and
    the square root of a float32 taken in float64 rounds to the correct float32."""
    import torch

    return t.to(torch.float64).sqrt().to(torch.float32)


def _nearest_int(t: Any) -> Any:
    """ggml's ``nearest_int``: adding 1.5 * 2^23 rounds to the nearest integer, ties to even."""
    import torch

    return torch.round(t)


def _roundf(t: Any) -> Any:
    """C ``roundf``: to the nearest integer, ties away from zero (exactly: the fraction of a float32 is)."""
    import torch

    whole = torch.trunc(t)
    return whole + torch.where((t - whole).abs() >= 0.5, torch.sign(t), torch.zeros_like(t))


def _signed_absmax(x: Any) -> Any:
    """Per block (last dim), the element of largest magnitude with its sign, the first one on ties (the
    ``if (amax < fabsf(v))`` loops), keeping the dim."""
    return x.gather(-1, x.abs().argmax(dim=-1, keepdim=True))


def _sum(t: Any, exact: bool = True) -> Any:
    """Sum over the last dim. ``exact``: in index order, as the C loops accumulate (``s += ...`` from 0),
    because the scale searches compare near-equal candidates and another summation order flips some of
    them; otherwise torch's (faster) order, for quantizing with a known choice, where an ulp of difference
    changes an fp16 scale only when it sits on a rounding boundary."""
    if not exact:
        return t.sum(-1)
    acc = t[..., 0].clone()
    for i in range(1, t.shape[-1]):
        acc += t[..., i]
    return acc


def _rows_of(x: Any, block: int) -> Any:
    """``[rows, n]`` -> ``[rows, n / block, block]``."""
    return x.reshape(x.shape[0], -1, block)


# --------------------------------------------------------------------------------------------------------
# The scale searches. Each returns the search's ``choice`` per block with what it yields; given a choice it
# computes only that candidate, which reproduces the search's result as long as the choice still wins.


def _qx(x: Any, w: Any, nmax: int, choice: Any = None) -> tuple[Any, Any, Any]:
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, w)`` over blocks (last dim): levels ``l`` in
    ``[-nmax, nmax - 1]`` and the block scale (value = scale * l), and the winning candidate.

    Candidate ``is`` (``-9..9``; 0 is the first, ``-nmax / max``) rounds with ``iscale = -(nmax + 0.1 is) /
    max``; its scale is the weighted least-squares one, ``sum(w x l) / sum(w l^2)``; the candidate of largest
    ``sumlx^2 / suml2`` wins, the earlier one on ties. Given ``choice``, only that candidate is computed:
    the search's result for as long as the choice still wins.
    """
    import torch

    m = _signed_absmax(x)
    tenth = torch.tensor(0.1, dtype=torch.float32)
    exact = choice is None

    def candidate(step: Any) -> tuple[Any, Any, Any]:
        iscale = -(nmax + tenth * step) / m
        level = torch.clamp(_nearest_int(iscale * x), -nmax, nmax - 1)
        return level, _sum((w * x) * level, exact), _sum((w * level) * level, exact)

    if choice is None:
        choice = torch.zeros(x.shape[:-1], dtype=torch.int8)
        level, sumlx, suml2 = candidate(torch.zeros_like(m))
        scale = torch.where(suml2 != 0, sumlx / suml2, 0.0)
        best = scale * sumlx
        for step in (*range(-9, 0), *range(1, 10)):
            lv, slx, sl2 = candidate(torch.full_like(m, float(step)))
            take = (sl2 > 0) & (slx * slx > best * sl2)
            level = torch.where(take[..., None], lv, level)
            scale = torch.where(take, slx / sl2, scale)
            best = torch.where(take, scale * slx, best)
            choice = torch.where(take, torch.tensor(step, dtype=torch.int8), choice)
    else:
        level, sumlx, suml2 = candidate(choice.to(torch.float32)[..., None])
        scale = torch.where(suml2 != 0, sumlx / suml2, 0.0)
    zero = m[..., 0].abs() < _EPS
    return torch.where(zero[..., None], 0.0, level), torch.where(zero, 0.0, scale), choice


def _qkx(
    x: Any, w: Any, nmax: int, rmin: float, rdelta: float, nstep: int, choice: Any = None
) -> tuple[Any, Any, Any, Any]:
    """``make_qkx2_quants`` / ``make_qkx3_quants`` (the same search) over blocks (last dim): levels in
    ``[0, nmax]``, scale and minimum (value = scale * l + min, min <= 0), and the choice.

    The first candidate rounds ``x - min`` with ``nmax / (max - min)``; candidate ``is`` (``0..nstep``)
    with ``(rmin + rdelta is + nmax) / (max - min)``, fitting scale and minimum by weighted least squares; a
    candidate of less weighted squared error than the best so far is taken, and taking it also replaces
    ``min``, which the later candidates round against (the C code reuses the variable). The choice is the
    last candidate taken (-1: none) with the minimum it rounded against; given it, only that candidate is
    computed, the search's result for as long as it still wins with that minimum.
    """
    import torch

    hi = x.amax(-1)
    lo = torch.clamp(x.amin(-1), max=0.0)
    flat = hi <= lo
    exact = choice is None
    sum_w, sum_x = _sum(w, exact), _sum(w * x, exact)
    delta = torch.tensor(rdelta, dtype=torch.float32)

    def error(scale: Any, level: Any, low: Any) -> Any:
        diff = (scale[..., None] * level + low[..., None]) - x
        return _sum(w * (diff * diff))

    def fitted(step: Any, base: Any) -> tuple[Any, Any, Any, Any]:
        span = hi - base
        iscale = (rmin + delta * step + nmax) / torch.where(span != 0, span, 1.0)
        level = torch.clamp(_nearest_int(iscale[..., None] * (x - base[..., None])), 0, nmax)
        wl = w * level
        sum_l, sum_l2, sum_xl = _sum(wl, exact), _sum(wl * level, exact), _sum(wl * x, exact)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = det > 0
        det = torch.where(ok, det, 1.0)
        scale = (sum_w * sum_xl - sum_x * sum_l) / det
        low = (sum_l2 * sum_x - sum_l * sum_xl) / det
        clip = low > 0
        scale = torch.where(clip, sum_xl / torch.where(sum_l2 != 0, sum_l2, 1.0), scale)
        return level, scale, torch.where(clip, 0.0, low), ok

    iscale = nmax / torch.where(hi > lo, hi - lo, 1.0)
    level = torch.clamp(_nearest_int(iscale[..., None] * (x - lo[..., None])), 0, nmax)
    scale, low = 1 / iscale, lo
    if choice is None:
        best = error(scale, level, low)
        last = torch.full(x.shape[:-1], -1, dtype=torch.int8)
        base = lo
        for step in range(nstep + 1):
            lv, sc, lw, ok = fitted(torch.tensor(float(step)), low)
            err = error(sc, lv, lw)
            take = ok & (err < best)
            level = torch.where(take[..., None], lv, level)
            base = torch.where(take, low, base)
            scale, low, best = (
                torch.where(take, sc, scale),
                torch.where(take, lw, low),
                torch.where(take, err, best),
            )
            last = torch.where(take, torch.tensor(step, dtype=torch.int8), last)
        choice = (last, base)
    else:
        last, base = choice
        lv, sc, lw, ok = fitted(torch.clamp(last, min=0).to(torch.float32), base)
        take = (last >= 0) & ok
        level = torch.where(take[..., None], lv, level)
        scale, low = torch.where(take, sc, scale), torch.where(take, lw, low)
    level = torch.where(flat[..., None], 0.0, level)
    return level, torch.where(flat, 0.0, scale), torch.where(flat, lo, low), choice


def _qp(x: Any, w: Any, nmax: int) -> tuple[Any, Any]:
    """``make_qp_quants(n, nmax, x, L, w)`` over blocks of non-negative values (a super-block's sub-block
    scales or minimums): levels in ``[0, nmax]`` and the super-block scale. Cheap (one value per 32
    weights), so it always runs in full: 8 candidate scales, then up to 5 passes of coordinate descent."""
    import torch

    top = torch.clamp(x.amax(-1, keepdim=True), min=0.0)
    zero = top[..., 0] < _EPS
    top = torch.where(zero[..., None], torch.ones_like(top), top)
    iscale = nmax / top
    level = _nearest_int(iscale * x)
    diff = x - (1 / iscale) * level
    best = _sum(w * diff * diff)[..., None]
    for step in (-4, -3, -2, -1, 1, 2, 3, 4):
        cand = (torch.tensor(0.1, dtype=torch.float32) * step + nmax) / top
        diff = x - (1 / cand) * torch.clamp(_nearest_int(cand * x), max=nmax)
        mse = _sum(w * diff * diff)[..., None]
        take = mse < best
        best, iscale = torch.where(take, mse, best), torch.where(take, cand, iscale)
    level = torch.clamp(_nearest_int(iscale * x), max=nmax)
    sumlx = _sum((w * x) * level)
    suml2 = _sum((w * level) * level)
    for _ in range(5):
        for i in range(x.shape[-1]):
            xi, wi, li = x[..., i], w[..., i], level[..., i]
            slx = sumlx - (wi * xi) * li
            sl2 = suml2 - (wi * li) * li
            ok = (slx > 0) & (sl2 > 0)
            new = torch.clamp(_nearest_int(xi * sl2 / torch.where(ok, slx, 1.0)), max=nmax)
            slx = slx + (wi * xi) * new
            sl2 = sl2 + (wi * new) * new
            take = ok & (new != li) & ((slx * slx) * suml2 > (sumlx * sumlx) * sl2)
            level[..., i] = torch.where(take, new, li)
            sumlx, suml2 = torch.where(take, slx, sumlx), torch.where(take, sl2, suml2)
    scale = torch.where(suml2 > 0, sumlx / torch.where(suml2 > 0, suml2, 1.0), 0.0)
    return torch.where(zero[..., None], 0.0, level), torch.where(zero, 0.0, scale)


# --------------------------------------------------------------------------------------------------------
# ggml types: float32 ``[rows, n_per_row]`` (already through F16) -> the values the quantized tensor holds


def _row_weights(x: Any, imatrix: Any, block: int, exact: bool) -> Any:
    """The ``*_impl`` quantizers' per-weight error weights: ``imatrix * sqrt(sigma2 + x^2)`` with sigma2 the
    row's mean square."""
    sigma2 = _sum(x * x, exact)[..., None] / x.shape[-1]
    return _rows_of(imatrix[None, :] * _sqrtf(sigma2 + x * x), block)


def _symmetric_32(x: Any, imatrix: Any, choice: Any, half: int) -> tuple[Any, Any]:
    """Q4_0 (``half`` 8) and Q5_0 (``half`` 16): 32-weight blocks of levels -half..half-1 times one scale;
    without an importance matrix, quantize_row_q4_0_ref / quantize_row_q5_0_ref."""
    import torch

    xb = _rows_of(x, 32)
    if imatrix is None:
        d = _signed_absmax(xb) / -half
        inv = torch.where(d != 0, 1 / torch.where(d != 0, d, 1.0), 0.0)
        q = torch.clamp(torch.trunc(xb * inv + half + 0.5), 0, 2 * half - 1)
        return ((q - half) * _f16(d)).reshape(x.shape), None
    level, scale, choice = _qx(xb, _row_weights(x, imatrix, 32, choice is None), half, choice)
    return (level * _f16(scale)[..., None]).reshape(x.shape), choice


def _q4_0(x: Any, imatrix: Any, choice: Any) -> tuple[Any, Any]:
    return _symmetric_32(x, imatrix, choice, 8)


def _q5_0(x: Any, imatrix: Any, choice: Any) -> tuple[Any, Any]:
    return _symmetric_32(x, imatrix, choice, 16)


def _q8_0(x: Any, imatrix: Any, choice: Any) -> tuple[Any, Any]:
    """quantize_row_q8_0_ref (Q8_0 ignores the importance matrix)."""
    import torch

    xb = _rows_of(x, 32)
    d = xb.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d != 0, 1 / torch.where(d != 0, d, 1.0), 0.0)
    return (_roundf(xb * inv) * _f16(d)).reshape(x.shape), None


def _q4_1(x: Any, imatrix: Any, choice: Any) -> tuple[Any, Any]:
    """Q4_1 with an importance matrix (the only way a Q4_0 file holds it): quantize_row_q4_1_impl."""
    import torch

    xb = _rows_of(x, 32)
    if imatrix is None:  # quantize_row_q4_1_ref
        lo, hi = xb.amin(-1, keepdim=True), xb.amax(-1, keepdim=True)
        d = (hi - lo) / 15
        inv = torch.where(d != 0, 1 / torch.where(d != 0, d, 1.0), 0.0)
        q = torch.clamp(torch.trunc((xb - lo) * inv + 0.5), 0, 15)
        return (q * _f16(d) + _f16(lo)).reshape(x.shape), None
    level, scale, low, choice = _qkx(
        xb, _row_weights(x, imatrix, 32, choice is None), 15, -0.9, 0.05, 36, choice
    )
    return (level * _f16(scale)[..., None] + _f16(low)[..., None]).reshape(x.shape), choice


def _q4_k(x: Any, imatrix: Any, choice: Any) -> tuple[Any, Any]:
    """quantize_row_q4_K_impl (with an importance matrix) or quantize_row_q4_K_ref: per 256-weight super-block,
    8 sub-blocks of 32 with their own scale and minimum, both quantized to 6 bits against two fp16 scales."""
    import torch

    xs = x.reshape(x.shape[0], -1, QK_K // 32, 32)  # [rows, super-blocks, 8, 32]
    exact = choice is None
    if imatrix is not None:
        sigma2 = 2 * _sum((xs * xs).flatten(-2), exact)[..., None, None] / QK_K
        w = imatrix.reshape(1, -1, QK_K // 32, 32) * _sqrtf(sigma2 + xs * xs)
        level, scale, low, choice = _qkx(xs, w, 15, -0.9, 0.05, 36, choice)
        mins = -low
        sub_w = _sum(w, exact)
        ls, d = _qp(scale, sub_w, 63)
        lm, dmin = _qp(mins, sub_w, 63)
    else:
        av = _sqrtf(_sum(xs * xs, exact)[..., None] / 32)
        level, scale, low, choice = _qkx(xs, av + xs.abs(), 15, -1.0, 0.1, 20, choice)
        mins = -low
        top_s = torch.clamp(scale.amax(-1), min=0.0)
        top_m = torch.clamp(mins.amax(-1), min=0.0)
        inv_s = torch.where(top_s > 0, 63 / torch.where(top_s > 0, top_s, 1.0), 0.0)
        inv_m = torch.where(top_m > 0, 63 / torch.where(top_m > 0, top_m, 1.0), 0.0)
        ls = torch.clamp(_nearest_int(inv_s[..., None] * scale), max=63)
        lm = torch.clamp(_nearest_int(inv_m[..., None] * mins), max=63)
        d, dmin = top_s / 63, top_m / 63
    sub_d = _f16(d)[..., None] * ls
    sub_m = _f16(dmin)[..., None] * lm
    safe = torch.where(sub_d != 0, sub_d, 1.0)[..., None]
    q = torch.clamp(_nearest_int((xs + sub_m[..., None]) / safe), 0, 15)
    q = torch.where((sub_d != 0)[..., None], q, level)
    return (sub_d[..., None] * q - sub_m[..., None]).reshape(x.shape), choice


def _q6_k(x: Any, imatrix: Any, choice: Any) -> tuple[Any, Any]:
    """quantize_row_q6_K_impl / _ref: 16 sub-blocks of 16 per super-block, each scale (make_qx_quants with
    the importance, or x^2, as weights) quantized to int8 against one fp16 scale."""
    import torch

    xs = x.reshape(x.shape[0], -1, QK_K // 16, 16)
    w = imatrix.reshape(1, -1, QK_K // 16, 16).expand_as(xs) if imatrix is not None else xs * xs
    _, scales, choice = _qx(xs, w, 32, choice)
    top = _signed_absmax(scales)  # [rows, super-blocks, 1]
    zero = top.abs() < _EPS
    iscale = -128 / torch.where(zero, 1.0, top)
    d = _f16(1 / iscale)
    sc = torch.clamp(_nearest_int(iscale * scales), max=127)
    sub_d = d * sc
    safe = torch.where(sub_d != 0, sub_d, 1.0)[..., None]
    q = torch.clamp(_nearest_int(xs / safe), -32, 31)
    value = torch.where(zero[..., None], 0.0, sub_d[..., None] * q)
    return value.reshape(x.shape), choice


def _f16_type(x: Any, imatrix: Any, choice: Any) -> tuple[Any, Any]:
    return _f16(x), None


_GGML: dict[str, Callable[[Any, Any, Any], tuple[Any, Any]]] = {
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q8_0": _q8_0,
    "Q4_K": _q4_k,
    "Q6_K": _q6_k,
    "F16": _f16_type,
}


def ggml_quantize(weight: Any, qtype: str, imatrix: Any = None, choice: Any = None) -> tuple[Any, Any]:
    """The values llama.cpp's quantizer gives a 2-D weight ``[rows, n_per_row]`` as ggml type ``qtype``, and
    the scale-search choices (None for types without a search; pass them back to skip the search).

    The weight goes through fp16 first: the gguf stage quantizes from the F16 float file. ``imatrix`` is
    the importance per column (mean squared input), as the gguf stage's ``imatrix.gguf`` holds it; None
    quantizes as llama.cpp does without one.
    """
    import torch

    if qtype not in _GGML:
        raise EdgesftError(f"qat: ggml type {qtype} is not simulated")
    if weight.shape[-1] % GGML_BLOCK[qtype]:
        raise EdgesftError(f"qat: rows of {weight.shape[-1]} do not divide into {qtype} blocks")
    rows = max(1, SLICE_WEIGHTS // weight.shape[-1])
    values, choices = [], []
    with torch.no_grad():
        iw = imatrix.to(torch.float32) if imatrix is not None else None
        for start in range(0, weight.shape[0], rows):
            x = _f16(weight[start : start + rows].detach().to(torch.float32))
            value, got = _GGML[qtype](x, iw, _sliced(choice, start, start + rows))
            values.append(value.to(weight.dtype))
            choices.append(got)
    return torch.cat(values), _joined(choices)


SLICE_WEIGHTS = 1 << 16
"""Weights quantized at a time. Every format rounds each row on its own, so a weight is quantized a slice
of rows after another: the ~20 float32 temporaries of a slice stay in the CPU cache instead of streaming
the whole tensor through memory once per operation (QAT healing quantizes every weight at every step)."""


def _sliced(choice: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a search's choices (a tensor, or a tuple of tensors, by row)."""
    if choice is None:
        return None
    if isinstance(choice, tuple):
        return tuple(c[start:stop] for c in choice)
    return choice[start:stop]


def _joined(parts: list[Any]) -> Any:
    """The choices of consecutive row slices as one (None for formats without a search)."""
    import torch

    if parts[0] is None:
        return None
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))
    return torch.cat(parts)


# --------------------------------------------------------------------------------------------------------
# onnxruntime int4


def int4_quantize(weight: Any, block_size: int, symmetric: bool, gather: bool = False) -> Any:
    """The values of onnxruntime's int4 weight-only quantization of a 2-D weight ``[rows, k]`` in blocks of
    ``block_size`` along ``k`` (a Linear's input dimension: MatMulNBits blocks run along K of ``B = W^T``).

    ``gather`` is the quantizer's numpy path for an embedding table it quantizes on its own (an untied
    ``Gather``): ``round(w / scale)`` with ties to even. Otherwise MLAS's (``quantize_matmul_4bits``): the
    weight times the reciprocal scale plus the zero point, C ``roundf``; a last partial block is padded with
    zeros.
    """
    import torch

    with torch.no_grad():
        x = weight.detach().to(torch.float32)
        rows, k = x.shape
        pad = -k % block_size
        xb = torch.nn.functional.pad(x, (0, pad)).reshape(rows, -1, block_size)
        lo, hi = xb.amin(-1, keepdim=True), xb.amax(-1, keepdim=True)
        if symmetric:
            scale = torch.where(hi.abs() > lo.abs(), hi, lo) / -8
            nonzero = scale != 0
            safe = torch.where(nonzero, scale, 1.0)
            if gather:
                q = torch.where(nonzero, torch.clamp(torch.round(xb / safe), -8, 7), 0.0)
                value = q * scale
            else:
                inv = torch.where(nonzero, 1 / safe, 0.0)
                q = torch.clamp(_roundf(xb * inv + 8), 0, 15)
                value = (q - 8) * scale
        else:
            if gather:
                raise EdgesftError("qat: onnxruntime quantizes an embedding table symmetrically only")
            lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
            scale = (hi - lo) / 15
            nonzero = scale != 0
            safe = torch.where(nonzero, scale, 1.0)
            zp = torch.clamp(_roundf(torch.where(nonzero, 0 - lo / safe, lo)), 0, 15)
            inv = torch.where(nonzero, 1 / safe, 0.0)
            q = torch.clamp(_roundf(xb * inv + zp), 0, 15)
            value = (q - zp) * scale
        return value.reshape(rows, -1)[:, :k].to(weight.dtype)


# --------------------------------------------------------------------------------------------------------
# Which weight gets which type


def _use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's layers that Q4_K_M gives more bits: the first and last eighth and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fallback(qtype: str, ncols: int) -> str:
    """tensor_type_fallback: a 256-block type for rows it does not divide, then F16 if nothing fits."""
    if ncols % GGML_BLOCK[qtype]:
        qtype = _FALLBACK.get(qtype, qtype)
        if ncols % GGML_BLOCK[qtype]:
            qtype = "F16"
    return qtype


def gguf_tensor_type(
    fmt: str, role: str, layer: int, n_layers: int, ncols: int, imatrix: bool, output_type: str | None = None
) -> str:
    """The ggml type llama.cpp's ``llama_tensor_get_type`` picks for one tensor of a ``fmt`` file (``q4_0``
    or ``q4_k_m``): ``role`` is the tensor's name in its block (``attn_v``, ``ffn_down``, ...) or
    ``output`` (the LM head, or a tied token embedding, which llama.cpp quantizes as the output) or
    ``token_embd`` (an untied one); ``ncols`` its row length. Only the rules these two file types reach."""
    default = _DEFAULT_TYPE[fmt]
    qtype = default
    if role == "output":
        qtype = output_type or ("Q8_0" if ncols % GGML_BLOCK[default] else "Q6_K")
    elif role in ("attn_v", "attn_qkv"):  # category_is_attn_v: a fused qkv counts as attn_v
        if fmt == "q4_k_m" and _use_more_bits(layer, n_layers):
            qtype = "Q6_K"
    elif role == "ffn_down":
        if fmt == "q4_k_m" and _use_more_bits(layer, n_layers):
            qtype = "Q6_K"
        elif fmt == "q4_0" and imatrix and layer < n_layers // 8:
            qtype = "Q4_1"  # "guard against craziness in the first few ffn_down layers"
    return _fallback(qtype, ncols)


@dataclass
class Use:
    """One module's read of a weight under fake quantization."""

    module: str
    """The module (a Linear or the token embedding) whose forward pass sees the quantized weight."""
    tensor: str
    """The tensor's name in the export (``blk.0.attn_q.weight``, ``token_embd.weight``, ``lm_head``)."""
    qtype: str
    """ggml type (``Q4_0``, ``Q6_K``, ``F16``, ...), ``int4`` (MatMulNBits) or ``int4_gather``."""
    importance: str | None = None
    """The Linear whose mean squared inputs weight the rounding (llama.cpp's importance matrix entry)."""


def plan(
    model: Any,
    fmt: str,
    imatrix: bool = True,
    block_size: int = 32,
    symmetric: bool = True,
    quantize_embedding: bool = True,
    output_type: str | None = None,
) -> list[Use]:
    """Every weight read that the ``fmt`` export quantizes, with its type: the decoder blocks' projections
    (``edgesft.prune.block_projections``), the LM head and the token embedding. Norms, biases and 1-D
    tensors stay float in every format."""
    from edgesft.prune import block_projections

    if fmt not in FORMATS:
        raise EdgesftError(f"qat: unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    blocks = block_projections(model)
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    names = {id(m): n for n, m in model.named_modules()}
    tied = head is not None and head.weight is embed.weight
    uses: list[Use] = []
    for i, block in enumerate(blocks):
        for role, (name, linear) in block.items():
            ncols = linear.in_features
            qtype = "int4" if fmt == "int4" else gguf_tensor_type(fmt, role, i, len(blocks), ncols, imatrix)
            uses.append(Use(name, f"blk.{i}.{role}.weight", qtype, name if imatrix else None))
    hidden = embed.weight.shape[1]
    head_name, embed_name = names[id(head)], names[id(embed)]
    if fmt == "int4":
        # the builder quantizes the LM head's MatMul in every int4 variant; a tied embedding shares it when
        # the embedding is quantized, an untied one is quantized on its own (Gather) or stays float
        uses.append(Use(head_name, "lm_head", "int4"))
        if quantize_embedding:
            uses.append(Use(embed_name, "embed_tokens", "int4" if tied else "int4_gather"))
        return uses
    out = gguf_tensor_type(fmt, "output", 0, len(blocks), hidden, imatrix, output_type)
    if tied:  # one tensor, token_embd.weight, read by both; its importance entry is the LM head's inputs
        for name in (embed_name, head_name):
            uses.append(Use(name, "token_embd.weight", out, head_name if imatrix else None))
    else:
        uses.append(Use(head_name, "output.weight", out, head_name if imatrix else None))
        # the importance matrix has no entry for the input embedding (it multiplies nothing)
        emb = gguf_tensor_type(fmt, "token_embd", 0, len(blocks), hidden, imatrix)
        uses.append(Use(embed_name, "token_embd.weight", emb))
    return uses


# --------------------------------------------------------------------------------------------------------
# Fake quantization in a model's forward pass


def importance_from_model(model: Any, batches: list[dict[str, Any]], modules: set[str]) -> dict[str, Any]:
    """Mean squared input per column of each named Linear over the batches' real (unpadded) tokens: the
    gguf stage's importance matrix (:func:`edgesft.gguf_export.imatrix_from_model`), keyed by module."""
    from edgesft.gguf_export import squared_input_sums

    sums = squared_input_sums(model, batches, {m: m for m in modules})
    return {k: s / max(n, 1) for k, (s, n) in sums.items()}


@dataclass
class FakeQuant:
    """Fake quantization of ``model``'s weights as ``uses`` (:func:`plan`) say, in every forward pass while
    attached: each module reads ``dequant(quant(w))`` and its gradient reaches ``w`` unchanged.

    ``batches`` (calibration batches of training rows) measure the importance matrix; ``refresh_steps``:
    the scale-search choices and the importance are recomputed at every optimizer step that is a multiple
    of it (call :meth:`on_step` before each training step). For an exact resume a checkpoint's step must be
    such a multiple (the prune stage's healing checkpoints at every evaluation, ``refresh_steps`` apart).
    """

    model: Any
    uses: list[Use]
    batches: list[dict[str, Any]] = field(default_factory=list)
    refresh_steps: int = 50
    block_size: int = 32
    symmetric: bool = True
    _enabled: bool = field(default=False, init=False)
    _importance: dict[str, Any] = field(default_factory=dict, init=False)
    _choices: dict[tuple[int, str], Any] = field(default_factory=dict, init=False)
    _cache: dict[tuple[int, str], tuple[int, Any]] = field(default_factory=dict, init=False)
    _refreshed_at: int | None = field(default=None, init=False)
    refreshes: int = field(default=0, init=False)
    refresh_seconds: float = field(default=0.0, init=False)

    def attach(self) -> None:
        """Patch every used module's forward pass, then take the first choices (at step 0)."""
        modules = dict(self.model.named_modules())
        for use in self.uses:
            self._patch(modules[use.module], use)
        self._enabled = True
        self.refresh()
        self._refreshed_at = 0

    def detach(self) -> None:
        """Give every module its own forward pass back and drop the cached weights."""
        modules = dict(self.model.named_modules())
        for use in self.uses:
            modules[use.module].__dict__.pop("forward", None)
        self._enabled = False
        self._cache.clear()

    def snap(self) -> int:
        """Put every fake-quantized weight on its format's grid for good: a fresh refresh (importance and
        scale search on the final weights, as the export will do), then ``w := dequant(quant(w))``. The
        saved model is then the model healing optimised, and what the prune stage measures is what the
        exported file computes: quantizing the snapped weights again gives the same values (Q4_0 and Q8_0
        exactly, Q4_1 within fp16 rounding, also with a re-measured importance matrix). A weight read in two
        formats (a tied embedding kept float for the lookup but int4 in the LM head) stays float. Returns
        the number of tensors snapped; call :meth:`detach` after."""
        import torch

        self.refresh()
        modules = dict(self.model.named_modules())
        formats: dict[int, set[str]] = {}
        params: dict[int, Any] = {}
        for use in self.uses:
            param = modules[use.module]._parameters["weight"]
            formats.setdefault(id(param), set()).add(use.qtype)
            params[id(param)] = (param, use)
        snapped = 0
        with torch.no_grad():
            for pid, (param, use) in params.items():
                if len(formats[pid]) == 1:
                    param.copy_(self._quantized(param, use))
                    snapped += 1
        self._cache.clear()
        return snapped

    def on_step(self, step: int) -> None:
        """Before the training step after ``step`` optimizer steps: refresh at every ``refresh_steps``."""
        if step % self.refresh_steps == 0 and step != self._refreshed_at:
            self.refresh()
            self._refreshed_at = step

    def refresh(self) -> None:
        """Re-measure the importance matrix on the float model, then search every block's scale again."""
        t0 = time.perf_counter()
        wanted = {u.importance for u in self.uses if u.importance}
        if wanted:
            with self._disabled():
                self._importance = importance_from_model(self.model, self.batches, wanted)
        self._choices.clear()
        self._cache.clear()
        modules = dict(self.model.named_modules())
        params = {u.module: modules[u.module]._parameters["weight"] for u in self.uses}
        for use in self.uses:
            key = (id(params[use.module]), use.qtype)
            if key not in self._cache:
                param = params[use.module]
                self._cache[key] = (param._version, self._quantize(param, use, search=True))
        self.refreshes += 1
        self.refresh_seconds += time.perf_counter() - t0

    def summary(self) -> dict[str, Any]:
        """Tensor counts per type, refreshes and their time: the prune stage's manifest records them."""
        tensors: dict[str, str] = {}
        for use in self.uses:
            tensors.setdefault(use.tensor, use.qtype)
        types: dict[str, int] = {}
        for qtype in tensors.values():
            types[qtype] = types.get(qtype, 0) + 1
        return {
            "tensor_types": dict(sorted(types.items())),
            "refreshes": self.refreshes,
            "refresh_seconds": round(self.refresh_seconds, 2),
        }

    @contextmanager
    def _disabled(self) -> Iterator[None]:
        enabled, self._enabled = self._enabled, False
        try:
            yield
        finally:
            self._enabled = enabled

    def _quantize(self, param: Any, use: Use, search: bool = False) -> Any:
        key = (id(param), use.qtype)
        if use.qtype in ("int4", "int4_gather"):
            return int4_quantize(param, self.block_size, self.symmetric, gather=use.qtype == "int4_gather")
        imatrix = self._importance.get(use.importance) if use.importance else None
        value, choice = ggml_quantize(param, use.qtype, imatrix, None if search else self._choices.get(key))
        if search and choice is not None:
            self._choices[key] = choice
        return value

    def _quantized(self, param: Any, use: Use) -> Any:
        """``param`` as the export stores it; computed once per weight version (optimizer step)."""
        key = (id(param), use.qtype)
        cached = self._cache.get(key)
        if cached is None or cached[0] != param._version:
            cached = (param._version, self._quantize(param, use))
            self._cache[key] = cached
        return cached[1]

    def _patch(self, module: Any, use: Use) -> None:
        import torch

        forward = module.forward

        def fake_quantized_forward(*args: Any, **kwargs: Any) -> Any:
            param = module._parameters["weight"]
            if not self._enabled:
                return forward(*args, **kwargs)
            value = self._quantized(param, use)
            if torch.is_grad_enabled() and param.requires_grad:
                value = value + (param - param.detach())  # straight-through: the gradient reaches param
            module._parameters["weight"] = value
            try:
                return forward(*args, **kwargs)
            finally:
                module._parameters["weight"] = param

        module.forward = fake_quantized_forward
