"""Contrastive loss (InfoNCE with in-batch and hard negatives), all-gather, gradient cache.

Shapes: B triplets per device, d embedding width, W processes. Embeddings are
L2-normalised, so a dot product is a cosine.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F

T = TypeVar("T")


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor | None,
             temperature: float = 0.05) -> torch.Tensor:
    """Mean cross-entropy of each anchor picking its own positive.

    Args:
        anchor: (B, d) normalised anchors (premises).
        positive: (N, d) normalised positives, N >= B; ``positive[i]`` belongs to ``anchor[i]``.
        negative: (N, d) normalised hard negatives, or None for in-batch negatives only.
        temperature: logits = cos / temperature (0.05 in the paper).

    Candidates for every anchor are all positives and all hard negatives, so each
    anchor has 2N - 1 negatives. Example::

        a, p, n = (F.normalize(torch.randn(4, 8), dim=-1) for _ in range(3))
        loss = info_nce(a, p, n)            # scalar
    """
    cands = positive if negative is None else torch.cat([positive, negative], dim=0)
    logits = anchor @ cands.T / temperature  # (B, N or 2N)
    target = torch.arange(anchor.shape[0], device=anchor.device)
    return F.cross_entropy(logits.float(), target)


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather (B, d) -> (W*B, d) across processes; the local slice keeps its graph.

    Returns the gathered tensor and the offset of the local slice. Without a
    process group it is the identity (offset 0).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    rank = dist.get_rank()
    parts[rank] = x  # gradient flows back to what this process computed
    return torch.cat(parts, dim=0), rank * x.shape[0]


def distributed_info_nce(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor | None,
                         temperature: float) -> torch.Tensor:
    """InfoNCE over the global batch: every process's anchors against all processes' candidates.

    Each process computes the same global loss, with gradient only through its own
    slice; DDP averages gradients over W processes, so the loss is scaled by W to
    give exactly the gradient of the global mean loss: backprop
    ``loss * world_size()``, log ``loss``.
    """
    a, _ = gather_with_grad(anchor)
    p, _ = gather_with_grad(positive)
    n = gather_with_grad(negative)[0] if negative is not None else None
    return info_nce(a, p, n, temperature)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rng_states(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CPU generator's state and, on a CUDA device, that device's: what dropout draws from."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


@contextlib.contextmanager
def _replay_rng(states: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> Iterator[None]:
    """Run the block from the RNG ``states`` (so dropout draws what it drew then), then restore the current ones."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.set_rng_state(states[0])
        if states[1] is not None:
            torch.cuda.set_rng_state(states[1], device)
        yield


def _call(fn: Callable[[], T]) -> T:
    return fn()


def _embedding_grads(reps: Sequence[torch.Tensor], loss_from_embeddings: Callable[[torch.Tensor], torch.Tensor],
                     run: Callable[[Callable[[], T]], T]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The loss of all chunks' (n_chunk, d) embeddings, taken as leaves, and its gradient split by chunk (one unit)."""
    reps_all = torch.cat([r.detach() for r in reps]).requires_grad_()

    def loss_and_backward() -> torch.Tensor:
        loss = loss_from_embeddings(reps_all)
        loss.backward()
        return loss

    loss = run(loss_and_backward)
    return loss, reps_all.grad.split([r.shape[0] for r in reps])


def grad_cache_step(
    embed: Callable[[object], torch.Tensor],
    chunks: Sequence[object],
    loss_from_embeddings: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    no_sync: Callable[[], object] | None = None,
    run: Callable[[Callable[[], T]], T] = _call,
) -> torch.Tensor:
    """One contrastive step with a gradient cache (Gao et al. 2021, "GradCache").

    1. embed every chunk without a graph (memory ~ one chunk's activations);
    2. compute the loss on all embeddings at once, backprop to the embeddings only;
    3. re-embed each chunk with a graph, replaying its RNG state so dropout matches,
       and backprop ``sum(emb * cached_grad)`` into the parameters.

    Args:
        embed: chunk -> (n_chunk, d) embeddings with graph.
        chunks: model inputs; their embeddings are concatenated in order.
        loss_from_embeddings: (sum n_chunk, d) -> scalar loss.
        no_sync: context factory (DDP ``no_sync``) used for all but the last chunk's backward.
        run: executor of the step's units of work (``run(fn) -> fn()``): each chunk's no-grad pass, the loss
            and its backward, each chunk's pass with graph and its backward. A caller may run them on another
            thread (e.g. a compute thread at background priority); each unit sets its own grad mode and RNG.
    Returns the loss (detached). Parameter gradients are accumulated as by ``loss.backward()``.
    """
    def no_grad_pass(c) -> tuple[tuple, torch.Tensor]:
        states = _rng_states(device)
        with torch.no_grad():
            return states, embed(c)

    passes = [run(lambda c=c: no_grad_pass(c)) for c in chunks]
    states, reps = [s for s, _ in passes], [r for _, r in passes]
    loss, grads = _embedding_grads(reps, loss_from_embeddings, run)

    def pass_with_graph(c, state, g, last: bool) -> None:
        with (no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()), _replay_rng(state, device):
            embed(c).backward(gradient=g)

    for i, (c, state, g) in enumerate(zip(chunks, states, grads)):
        run(lambda c=c, state=state, g=g, last=i == len(chunks) - 1: pass_with_graph(c, state, g, last))
    return loss.detach()


def split_backward_step(
    embed: Callable[[object], torch.Tensor],
    chunks: Sequence[object],
    loss_from_embeddings: Callable[[torch.Tensor], torch.Tensor],
    run: Callable[[Callable[[], T]], T] = _call,
) -> torch.Tensor:
    """One contrastive step whose chunks' graphs all fit in memory, with each chunk's backward a unit of its own.

    One process only: DDP arms its all-reduce at each forward outside ``no_sync``, so with a backward per chunk the
    first would all-reduce that chunk's gradients alone (:func:`grad_cache_step` wraps forward and backward).

    Like :func:`grad_cache_step` without the no-grad pass: embed each chunk with its graph, compute the loss on
    all embeddings (detached) and backprop to them, then backprop each chunk's embeddings with their gradient.
    The parameter gradients are those of ``loss.backward()`` through the whole graph (summed in another order);
    a caller's executor (``run``) then waits at most one chunk's backward, not all of them.
    """
    reps = [run(lambda c=c: embed(c)) for c in chunks]
    loss, grads = _embedding_grads(reps, loss_from_embeddings, run)
    for r, g in zip(reps, grads):
        run(lambda r=r, g=g: r.backward(gradient=g))
    return loss.detach()

