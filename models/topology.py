"""FSAR's Adaptive Topology Structure: the graph a GCN block aggregates joints over.

For partition ``k`` of block ``b`` the adjacency is
``alpha_b * A_k + beta_b * I_bk + gamma_b * U_bk``: ``A_k`` is the layout's fixed
physical graph, ``I`` (influence) is learned and shared across sites, ``U`` (unique)
is learned and stays on its site, and the three scalars weigh them per site.

The fixed graph is not stored here but passed in: Opacus refuses trainable modules
that hold buffers, and it takes the batch size from the *last* positional input, so
the call is ``topology(adjacency, x)``.
"""

from __future__ import annotations

import torch
from torch import nn


class AdaptiveTopology(nn.Module):
    """Aggregates joints over the adaptive graph of each partition.

    Input ``x`` is ``[N, C, T, M*V]`` (persons side by side on the joint axis, no
    edges between them); the output is ``[N, K*C, T, M*V]``, one ``C``-channel group
    per partition, ready for a 1x1 convolution that mixes them.
    """

    def __init__(self, num_partitions: int, num_joints: int, init_std: float = 1e-3) -> None:
        super().__init__()
        shape = (num_partitions, num_joints, num_joints)
        self.influence = nn.Parameter(torch.randn(shape) * init_std)
        self.unique = nn.Parameter(torch.randn(shape) * init_std)
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.beta = nn.Parameter(torch.tensor(1.0))
        self.gamma = nn.Parameter(torch.tensor(1.0))

    def matrix(self, adjacency: torch.Tensor, shared_only: bool = False) -> torch.Tensor:
        """The mixed ``[K, V, V]`` adjacency (rows receive, columns send).

        ``shared_only`` drops the personal unique term: what a frozen teacher built from
        the global model uses in multi-grain distillation.
        """
        mixed = self.alpha * adjacency + self.beta * self.influence
        if not shared_only:
            mixed = mixed + self.gamma * self.unique
        return mixed

    def forward(
        self, adjacency: torch.Tensor, x: torch.Tensor, shared_only: bool = False
    ) -> torch.Tensor:
        # Opacus's per-sample gradient (below) assumes the full graph; the shared-only
        # path is for a frozen teacher that runs without gradients.
        return aggregate(x, self.matrix(adjacency, shared_only))


def aggregate(x: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
    """``y[n, k, c, t, w] = sum_v mixed[k, w, v] * x[n, c, t, v]`` per person, flattened."""
    n, c, t, mv = x.shape
    k, v, _ = mixed.shape
    if mv % v:
        raise ValueError(f"joint axis of size {mv} is not a multiple of the graph's {v} joints")
    xs = x.reshape(n * c * t * (mv // v), v)
    # One matmul over all partitions: [rows, V] @ [V, K*V] -> [rows, K, W].
    y = xs @ mixed.permute(2, 0, 1).reshape(v, k * v)
    y = y.reshape(n, c, t, mv // v, k, v).permute(0, 4, 1, 2, 3, 5)
    return y.reshape(n, k * c, t, mv)


def per_sample_graph_grad(
    x: torch.Tensor, backprops: torch.Tensor, num_partitions: int, num_joints: int
) -> torch.Tensor:
    """``G[n, k, w, v]``: the gradient of sample ``n``'s loss w.r.t. the mixed adjacency."""
    n, c, t, mv = x.shape
    s = t * (mv // num_joints)
    xs = x.reshape(n, c * s, num_joints)
    g = backprops.reshape(n, num_partitions, c * s, num_joints)
    return torch.einsum("nkrw,nrv->nkwv", g, xs)


def per_sample_grads(
    layer: AdaptiveTopology, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Exact per-sample gradients of every parameter of ``layer`` (for DP-SGD)."""
    adjacency, x = activations[0], activations[-1]
    k, v, _ = adjacency.shape
    g = per_sample_graph_grad(x, backprops.to(x.dtype), k, v)
    ret: dict[nn.Parameter, torch.Tensor] = {}
    terms = (
        (layer.alpha, adjacency, None),
        (layer.beta, layer.influence, layer.influence),
        (layer.gamma, layer.unique, layer.unique),
    )
    for scalar, matrix, param in terms:
        if scalar.requires_grad:
            ret[scalar] = torch.einsum("nkwv,kwv->n", g, matrix.to(g.dtype))
        if param is not None and param.requires_grad:
            ret[param] = g * scalar.to(g.dtype)
    return ret


def _register_with_opacus() -> None:
    """Teach Opacus the per-sample gradients (and norms) of :class:`AdaptiveTopology`."""
    try:
        from opacus.grad_sample.utils import register_grad_sampler, register_norm_sampler
    except ImportError:  # DP is optional for pure inference
        return

    register_grad_sampler(AdaptiveTopology)(per_sample_grads)

    def norm_sampler(layer, activations, backprops):  # type: ignore[no-untyped-def]
        grads = per_sample_grads(layer, activations, backprops)
        return {p: g.reshape(g.shape[0], -1).norm(2, dim=1) for p, g in grads.items()}

    register_norm_sampler(AdaptiveTopology)(norm_sampler)


_register_with_opacus()
