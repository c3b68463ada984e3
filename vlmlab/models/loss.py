"""The language-model loss over the vocabulary head, without holding the logits of every scored token.

The dense loss runs the head on all scored positions at once: `[scored tokens, vocabulary]` logits, upcast to
fp32, plus their gradient in the backward. At Qwen3's 151,936-token vocabulary that is 0.6 MB per token
(9.9 GB at 16k scored tokens), the largest tensors of a step. The implementations (`train.loss_impl`):

- `dense`: that, as transformers computes it; the reference the others are tested against.
- `chunked`: pure torch, any device. The scored rows go through the head a chunk at a time; each chunk's
  softmax gradient is formed and folded into the gradients of the hidden states and the head weight right
  away (the head's backward happens in the forward, as Liger's fused kernel does), so only one chunk's logits
  ever exist and nothing is recomputed. Same loss and gradients as `dense` up to float summation order.
- `liger`: Liger-Kernel's fused linear cross-entropy (Triton), on CUDA with `liger-kernel` installed.
- `auto`: `liger` where it can run, else `chunked`.
"""

from __future__ import annotations

import torch
from torch import nn

from vlmlab.config import LOSS_IMPLS
from vlmlab.errors import ConfigError, unknown_choice

# one chunk's fp32 logits at most this many bytes (with its softmax gradient formed in place: 2x at the peak)
CHUNK_BYTES = 256 << 20


def liger_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_loss_impl(name: str, device: torch.device) -> str:
    """The implementation `name` stands for on `device`; one line where it cannot run there."""
    if name not in LOSS_IMPLS:
        raise unknown_choice("loss implementation (train.loss_impl)", name, LOSS_IMPLS)
    if name == "auto":
        return "liger" if liger_available(device) else "chunked"
    if name == "liger" and not liger_available(device):
        raise ConfigError(
            f"train.loss_impl=liger needs a CUDA device and the liger-kernel package (here: {device.type}"
            f"{', liger-kernel installed' if _liger_installed() else ', liger-kernel not installed'}); valid "
            "here: auto, dense, chunked."
        )
    return name


def _liger_installed() -> bool:
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return False
    return True


def chunk_rows(vocab_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows per chunk so that one chunk's fp32 logits stay within `chunk_bytes`."""
    return max(1, chunk_bytes // (4 * vocab_size))


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    impl: str = "chunked",
    rows_per_chunk: int | None = None,
) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T` ([N, D] x [V, D]) against `targets` [N] (every row scored)."""
    if impl == "dense":
        return nn.functional.cross_entropy(
            nn.functional.linear(hidden, weight).float(), targets, reduction="sum"
        )
    if impl == "chunked":
        rows = rows_per_chunk or chunk_rows(weight.shape[0])
        return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, rows)
    if impl == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        # its forward takes the head weight first (every released version)
        return LigerFusedLinearCrossEntropyLoss(reduction="sum")(weight, hidden, targets)
    raise unknown_choice("loss implementation", impl, LOSS_IMPLS[1:])


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and, chunk by chunk, the gradients it will need; backward only scales them.
    Everything is in place where it can be: one chunk's logits (and their softmax gradient, formed over them)
    and the fp32 head gradient are the only large tensors."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, rows):  # noqa: ANN001, ANN205 (autograd.Function signature)
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # fp32 accumulation over chunks, as one dense matmul would accumulate
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        )
        for start in range(0, hidden.shape[0], rows):
            h, t = hidden[start : start + rows], targets[start : start + rows]
            logits = nn.functional.linear(h, weight).float()  # the matmul in the ambient autocast dtype
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if not (need_hidden or need_weight):
                continue
            # d(sum of losses)/d(logits) = softmax - one_hot, formed in place over the logits
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            if need_hidden:
                grad_hidden[start : start + rows] = grad.to(h.dtype) @ weight.to(h.dtype)
            if need_weight:
                if h.dtype == torch.float32:
                    grad_weight.addmm_(grad.T, h)
                else:  # bf16 activations: the product in their dtype, accumulated in fp32
                    grad_weight.add_(grad.to(h.dtype).T @ h)
        # kept on ctx, not saved tensors: backward drops them, so autograd can take the head gradient as is
        ctx.grads = (grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):  # noqa: ANN001, ANN205
        if ctx.grads is None:
            raise RuntimeError(
                "backward ran twice through the chunked loss (retain_graph): use train.loss_impl=dense for that."
            )
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None
        if grad_hidden is not None:
            grad_hidden.mul_(grad_output.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_output).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None


__all__ = ["CHUNK_BYTES", "LOSS_IMPLS", "chunk_rows", "linear_cross_entropy", "resolve_loss_impl"]
