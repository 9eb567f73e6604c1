r"""A whitening layer: a flow that starts as the maximum-likelihood Gaussian.

.. math:: z = L x + b, \qquad \log|\det J| = \textstyle\sum_i \log L_{ii}

with :math:`L` lower triangular with a positive (log-parameterised) diagonal. Its data-dependent
initialization sets :math:`L = K^{-1}` and :math:`b = -L\mu`, where :math:`K K^\top` is the
first batch's covariance (Ledoit-Wolf shrinkage keeps it invertible when the batch is small) and
:math:`\mu` its mean: the layer whitens the data. Every flow's other layers start as the
identity (zero-initialized output layers), so a flow whose first layers are
:class:`~ppgen.models.flows.layers.ActNorm` and :class:`Whiten` *is* the Gaussian fitted to that
batch at step 0, and maximum-likelihood training starts from there rather than from a standard
normal. On small tables this is what keeps a default flow from losing to a single Gaussian
(issue 22: on wine's first two features a default MAF scored 3.14 nats against the Gaussian's
2.76).

The trainer calls ``initialize`` once, before the first step and never on resume; the
``initialized`` buffer is in the state dict, so a loaded model is never re-initialized.
"""

from __future__ import annotations

__all__ = ["Whiten"]

import torch
from torch import Tensor

from ppgen.models.flows.core import FlowTransform, LazyTransform


class _LowerAffine(FlowTransform):
    """``z = x L^T + b`` over the last dim, ``L`` lower triangular with diagonal ``exp(s)``."""

    def __init__(self, layer: Whiten) -> None:
        super().__init__(1)
        self.layer = layer

    def _matrix(self) -> Tensor:
        layer = self.layer
        d = layer.log_diag.shape[0]
        lower = layer.log_diag.new_zeros(d, d)
        lower[layer.rows, layer.cols] = layer.tril
        return lower + torch.diag(layer.log_diag.exp())

    def _ladj(self, x: Tensor) -> Tensor:
        return self.layer.log_diag.sum().expand(x.shape[:-1])

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x @ self._matrix().T + self.layer.shift, self._ladj(x)

    def inv_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        lower = self._matrix()
        rhs = (z - self.layer.shift).reshape(-1, z.shape[-1]).T  # (D, M)
        x = torch.linalg.solve_triangular(lower, rhs, upper=False).T.reshape(z.shape)
        return x, -self._ladj(z)


class Whiten(LazyTransform):
    """A fixed lower-triangular affine map over ``features``, initialized to whiten the first
    training batch (see the module docstring).

    The batch covariance is scikit-learn's Ledoit-Wolf estimate (shrunk towards a scaled
    identity by the amount that minimises its expected error), which stays invertible when the
    batch has fewer points than dimensions and barely shrinks when it has many.

    Arguments:
        features: D, the vector size.
    """

    initialized: Tensor
    rows: Tensor
    cols: Tensor
    shift: Tensor
    log_diag: Tensor
    tril: Tensor

    def __init__(self, features: int) -> None:
        super().__init__()
        d = int(features)
        rows, cols = torch.tril_indices(d, d, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        # buffers, not parameters: the whitening is fixed at its data-dependent value (training
        # it jointly with the flow made 600-step MAF fits on moons unstable: the validation
        # loss rose from 0.48 to 0.60 nats in the last 150 steps); the layers after it learn
        # everything else, and a fixed invertible affine map costs the flow no expressiveness
        self.register_buffer("shift", torch.zeros(d))
        self.register_buffer("log_diag", torch.zeros(d))
        self.register_buffer("tril", torch.zeros(d * (d - 1) // 2))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, context: Tensor | None = None) -> FlowTransform:
        return _LowerAffine(self)

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if not bool(self.initialized):
            flat = x.reshape(-1, x.shape[-1]).double()
            n, d = flat.shape
            if n > 1:
                # imported here: scikit-learn costs ~0.5 s to import, and only a flow being
                # initialized for training needs it
                from sklearn.covariance import ledoit_wolf

                cov = torch.as_tensor(ledoit_wolf(flat.cpu().numpy())[0], dtype=torch.float64)
                eye = torch.eye(d, dtype=cov.dtype)
                cov = cov + 1e-6 * cov.diagonal().mean().clamp_min(1e-12) * eye
                chol = torch.linalg.cholesky(cov)
                inv = torch.linalg.solve_triangular(chol, eye, upper=False)
                to = {"dtype": self.tril.dtype, "device": self.tril.device}
                self.log_diag.copy_(inv.diagonal().log().to(**to))
                self.tril.copy_(inv[self.rows, self.cols].to(**to))
                self.shift.copy_((-(inv @ flat.mean(0))).to(**to))
                self.initialized.fill_(True)
        return super().initialize(x, context)

    def extra_repr(self) -> str:
        return f"features={self.log_diag.shape[0]}, initialized={bool(self.initialized)}"
