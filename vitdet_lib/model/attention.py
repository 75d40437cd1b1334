"""Fused attention with a trainable additive bias (the relative-position bias).

``F.scaled_dot_product_attention`` on CPU has a fused (flash) kernel, but it cannot return a
gradient for ``attn_mask``; when the mask requires grad (a trainable relative-position bias) it
silently falls back to the math path, which stores the [B, heads, N, N] scores and softmax of
every block: ~1.6 GB per global ViT-B block at 1024x1024. :func:`biased_attention` keeps the
fused forward and computes the backward (including the bias gradient) in query chunks, so only
[B, heads, chunk, N] temporaries ever exist. On CUDA the memory-efficient kernel supports a
bias gradient natively, so SDPA is called directly.

Global attention's bias arrives factored (:class:`~.pos.GridBias`): on CPU the forward and the
backward build the bias rows of one query chunk at a time and add the bias gradient straight into
the factored rows, so neither the dense [heads, N, N] bias nor its gradient ever exists (1.6 GB
for ViT-B at 1024, ~2.4 GB at the backward's peak, shared by all global blocks).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .pos import GridBias, add_rows_grad, expand_rows

aten = torch.ops.aten

_NAIVE = False  # see naive_attention

# elements of one [B, heads, chunk, N] temporary in the chunked backward (~64 MB in fp32)
_CHUNK_ELEMENTS = 1 << 24


class _FlashWithBiasGrad(torch.autograd.Function):
    """CPU flash attention forward; backward recomputes the probabilities chunk by chunk from
    the saved log-sum-exp and returns grads for q, k, v and the bias."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
        out, lse = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=bias)
        ctx.save_for_backward(q, k, v, bias, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, bias, out, lse = ctx.saved_tensors
        if not ctx.needs_input_grad[3]:
            dq, dk, dv = aten._scaled_dot_product_flash_attention_for_cpu_backward(
                grad_out, q, k, v, out, lse, 0.0, False, attn_mask=bias)
            return dq, dk, dv, None
        dtype = q.dtype
        q, k, v, grad_out, out = (t.float() for t in (q, k, v, grad_out, out))
        scale = q.shape[-1] ** -0.5
        b, heads, n, _ = q.shape
        s = k.shape[-2]
        chunk = max(1, min(n, _CHUNK_ELEMENTS // max(1, b * heads * s)))
        delta = (grad_out * out).sum(-1, keepdim=True)  # [B, heads, N, 1]
        kt, vt = k.transpose(-2, -1), v.transpose(-2, -1)
        dq = torch.empty_like(q)
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        dbias = torch.empty(bias.shape, dtype=torch.float32, device=bias.device)
        bias_rows = bias.shape[-2]
        for start in range(0, n, chunk):
            rows = slice(start, min(n, start + chunk))
            qc, goc = q[:, :, rows], grad_out[:, :, rows]
            brows = rows if bias_rows == n else slice(None)  # a bias broadcast over queries
            logits = torch.matmul(qc, kt).mul_(scale).add_(bias[..., brows, :])
            p = logits.sub_(lse[:, :, rows, None]).exp_()  # [B, heads, c, S], in place
            dp = torch.matmul(goc, vt)
            ds = dp.sub_(delta[:, :, rows]).mul_(p)
            dv.add_(torch.matmul(p.transpose(-2, -1), goc))
            dq[:, :, rows] = torch.matmul(ds, k).mul_(scale)
            dk.add_(torch.matmul(ds.transpose(-2, -1), qc), alpha=scale)
            gb = ds.sum_to_size(*bias.shape[:-2], ds.shape[-2], s)
            if bias_rows == n:
                dbias[..., rows, :] = gb
            elif start == 0:
                dbias.copy_(gb.sum(-2, keepdim=True))
            else:
                dbias.add_(gb.sum(-2, keepdim=True))
        return dq.to(dtype), dk.to(dtype), dv.to(dtype), dbias.to(bias.dtype)


def _grid_chunk_rows(batch: int, heads: int, w: int, keys: int, h: int) -> int:
    """Query grid-rows per chunk so that one [B, heads, chunk, N] temporary stays ~64 MB."""
    return max(1, min(h, _CHUNK_ELEMENTS // max(1, batch * heads * w * keys)))


class _FlashGridBias(torch.autograd.Function):
    """Attention over a whole h x w grid with a factored relative-position bias (rows
    [heads, 2h-1, w, w]); forward and backward run in chunks of query grid-rows."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                rows: torch.Tensor) -> torch.Tensor:
        b, heads, n, _ = q.shape
        w = rows.shape[-1]
        h = n // w
        step = _grid_chunk_rows(b, heads, w, n, h)
        rows_q = rows.to(q.dtype)
        out = torch.empty_like(q)
        lse = torch.empty(b, heads, n, dtype=torch.float32, device=q.device)
        buf = None
        for first in range(0, h, step):
            last = min(h, first + step)
            sl = slice(first * w, last * w)
            if buf is None or buf.numel() != heads * (last - first) * w * n:
                buf = rows_q.new_empty(heads * (last - first) * w * n)
            mask = expand_rows(rows_q, first, last, out=buf)[None]
            o, l = aten._scaled_dot_product_flash_attention_for_cpu(q[:, :, sl], k, v,
                                                                     attn_mask=mask)
            out[:, :, sl] = o
            lse[:, :, sl] = l
        ctx.save_for_backward(q, k, v, rows, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, rows, out, lse = ctx.saved_tensors
        dtype = q.dtype
        q, k, v, grad_out, out = (t.float() for t in (q, k, v, grad_out, out))
        rows_f = rows.float()
        scale = q.shape[-1] ** -0.5
        b, heads, n, _ = q.shape
        w = rows.shape[-1]
        h = n // w
        step = _grid_chunk_rows(b, heads, w, n, h)
        delta = (grad_out * out).sum(-1, keepdim=True)  # [B, heads, N, 1]
        kt, vt = k.transpose(-2, -1), v.transpose(-2, -1)
        dq = torch.empty_like(q)
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        grad_rows = torch.zeros(rows.shape, dtype=torch.float32, device=rows.device)
        for first in range(0, h, step):
            last = min(h, first + step)
            sl = slice(first * w, last * w)
            qc, goc = q[:, :, sl], grad_out[:, :, sl]
            logits = torch.matmul(qc, kt).mul_(scale).add_(expand_rows(rows_f, first, last))
            p = logits.sub_(lse[:, :, sl, None]).exp_()  # [B, heads, c, N], in place
            ds = torch.matmul(goc, vt).sub_(delta[:, :, sl]).mul_(p)
            dv.add_(torch.matmul(p.transpose(-2, -1), goc))
            dq[:, :, sl] = torch.matmul(ds, k).mul_(scale)
            dk.add_(torch.matmul(ds.transpose(-2, -1), qc), alpha=scale)
            if ctx.needs_input_grad[3]:
                add_rows_grad(grad_rows, ds.sum(0) if b > 1 else ds[0], first)
        grad_rows = grad_rows.to(rows.dtype) if ctx.needs_input_grad[3] else None
        return dq.to(dtype), dk.to(dtype), dv.to(dtype), grad_rows


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     bias: torch.Tensor | GridBias | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v with a fused kernel wherever one exists.

    Args:
        q, k, v: [B, heads, N, head_dim].
        bias: additive mask broadcastable to [B, heads, N, N] (-inf masks a key), a factored
            :class:`~.pos.GridBias` for attention over a whole token grid (N = h*w, row-major),
            or None.
    Returns:
        [B, heads, N, head_dim].
    """
    if _NAIVE:
        return _naive(q, k, v, bias.dense() if isinstance(bias, GridBias) else bias)
    if isinstance(bias, GridBias):
        if q.shape[-2] != bias.h * bias.w or k.shape[-2] != q.shape[-2]:
            raise ValueError(f"GridBias of a {bias.h}x{bias.w} grid used with {q.shape[-2]} "
                             f"queries and {k.shape[-2]} keys")
        if q.device.type == "cpu":
            return _FlashGridBias.apply(q, k, v, bias.rows)
        # CUDA: SDPA's memory-efficient kernel takes a dense bias (and its grad)
        bias = bias.dense()
    if bias is not None:
        bias = bias.to(q.dtype)
    needs_bias_grad = bias is not None and bias.requires_grad and torch.is_grad_enabled()
    if needs_bias_grad and q.device.type == "cpu" and bias.dim() == 4:
        return _FlashWithBiasGrad.apply(q, k, v, bias)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


@contextlib.contextmanager
def naive_attention(enabled: bool = True) -> Iterator[None]:
    """Within the context, :func:`biased_attention` materialises softmax(q k^T / sqrt(d) + bias)
    with plain autograd ops, as detectron2's ViTDet and most public ViT detectors do, so
    backward keeps [B, heads, N, N] per block: the reference the benchmark compares against."""
    global _NAIVE
    previous, _NAIVE = _NAIVE, enabled
    try:
        yield
    finally:
        _NAIVE = previous


def _naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           bias: torch.Tensor | None) -> torch.Tensor:
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    return scores.softmax(-1) @ v
