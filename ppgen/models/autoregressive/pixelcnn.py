r"""PixelCNN and Gated PixelCNN: exact autoregressive densities over the pixels of an image.

.. math::

    p(x) = \prod_{i=1}^{HW} \prod_{c=1}^{C} p(x_{i,c} \mid x_{<i}, x_{i,<c})

in raster order over the pixels and, within a pixel, channel order (R before G before B).
Causality comes from masked convolutions: a feature at pixel ``i`` in channel group ``g`` sees
the pixels before ``i`` and, at ``i`` itself, only the input channels before ``g`` (mask A, the
first layer) or up to ``g`` (mask B, every later layer), as in PixelRNN (van den Oord et al.
2016, section 3.4). Each conditional is a categorical over the data's levels (an exact discrete
likelihood) or a discretized mixture of logistics (Salimans et al. 2017), so ``log_prob`` is the
exact log-likelihood of the data as given, with no dequantization.

Two networks (their layers live in :mod:`~ppgen.models.autoregressive.pixelcnn_layers`) share
the output distributions and samplers defined here:

- :class:`PixelCNN`: a mask-A convolution, then residual blocks of masked convolutions
  (1x1, kxk mask B, 1x1). Its stacked masks leave a *blind spot* up and to the right.
- :class:`GatedPixelCNN`: a vertical stack (the rows above, no mask, shifted down one row) and a
  horizontal stack (the row so far) with gated activations ``tanh(a) * sigmoid(b)``; together
  they see every earlier pixel within the receptive field (no blind spot). Optional class
  conditioning adds a learned per-class bias to every gate.

Sampling draws one sub-pixel at a time. ``method="naive"`` runs the whole network once per
sub-pixel; ``method="fast"`` (the default) keeps every layer's activations in canvases and
computes, per step, only the activations at the new position (and the vertical stack once per
finished row), after Ramachandran et al. (2017). Both read the same pre-drawn uniforms through
inverse CDFs, so with one seed they return the same samples.
"""

from __future__ import annotations

__all__ = [
    "AbstractPixelCNN",
    "DiscretizedLogisticMixture",
    "GatedPixelCNN",
    "PixelCNN",
    "PixelCNNConfig",
]

import abc
import dataclasses
from typing import Any, ClassVar, Literal

import pyro
import torch
from torch import Tensor

from ppgen.models.autoregressive._conditionals import LOGISTIC_FROM_LEVELS
from ppgen.models.autoregressive.pixelcnn_layers import (
    _GatedPixelCNNNet,
    _Net,
    _PixelCNNNet,
)
from ppgen.models.base import AbstractGenerativeModel, ModelConfig, pyro_program
from ppgen.models.conditioning import ExactConditional
from ppgen.models.distributions import DiscretizedLogisticMixture, inverse_cdf

OutputKind = Literal["auto", "categorical", "logistic"]


# ---- configuration ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class PixelCNNConfig(ModelConfig):
    """Configuration of :class:`PixelCNN` and :class:`GatedPixelCNN`.

    Image data only: ``event_shape`` is ``(C, H, W)`` and the data is binary or discrete.

    Arguments:
        hidden: one width ``h`` per masked layer after the first: a residual block with a
            ``2h``-channel stream and an ``h``-channel bottleneck (PixelCNN), or a gated layer
            with ``h`` feature maps per stack (Gated PixelCNN). The first (mask A) layer has
            width ``hidden[0]``. Every width must be at least ``C`` (one channel group each).
        kernel_size: the (odd) kernel of every layer after the first.
        first_kernel_size: the (odd) kernel of the first, mask-A layer.
        output: ``"categorical"`` (a softmax over the levels), ``"logistic"`` (a discretized
            logistic mixture, Salimans et al. 2017) or ``"auto"``: categorical below 256
            levels, logistic from 256 on.
        components: logistic mixture components per sub-pixel (``output="logistic"``).
        num_classes: condition on a class label in ``0..num_classes-1`` (passed as
            ``context``); None for an unconditional model.
        dropout: dropout on each layer's hidden activations during training (never when
            sampling).
    """

    hidden: tuple[int, ...] = (64, 64, 64, 64)
    kernel_size: int = 3
    first_kernel_size: int = 5
    output: OutputKind = "auto"
    components: int = 5
    num_classes: int | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.event_shape) != 3:
            raise ValueError(
                f"PixelCNN models images: event_shape must be (channels, height, width), got "
                f"{tuple(self.event_shape)}; for vector data use an autoregressive model over "
                "vectors (made, nade) or a flow"
            )
        if self.kind == "continuous":
            raise ValueError(
                "PixelCNN's conditionals are discrete (categorical or discretized logistic): it "
                "needs binary or discrete image data; quantize continuous images to levels first"
            )
        channels = self.event_shape[0]
        if not self.hidden or any(int(h) < channels for h in self.hidden):
            raise ValueError(
                f"hidden must list at least one width, each >= the {channels} channel(s) (one "
                f"channel group per colour), got {self.hidden}"
            )
        for name in ("kernel_size", "first_kernel_size"):
            k = getattr(self, name)
            if k < 1 or k % 2 == 0:
                raise ValueError(f"{name} must be a positive odd number, got {k}")
        if self.output not in ("auto", "categorical", "logistic"):
            raise ValueError(
                f"output must be 'auto', 'categorical' or 'logistic', got {self.output!r}"
            )
        if self.components < 1:
            raise ValueError(f"components must be >= 1, got {self.components}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    @property
    def output_kind(self) -> Literal["categorical", "logistic"]:
        """The output distribution ``"auto"`` resolves to for this data."""
        if self.output != "auto":
            return self.output
        assert self.levels is not None, "discrete data without levels"
        return "categorical" if self.levels < LOGISTIC_FROM_LEVELS else "logistic"

    @property
    def params_per_subpixel(self) -> int:
        """Network outputs per sub-pixel: ``levels`` logits, or 3 per logistic component."""
        assert self.levels is not None, "discrete data without levels"
        return self.levels if self.output_kind == "categorical" else 3 * self.components


# ---- the families -----------------------------------------------------------------------------


class AbstractPixelCNN(AbstractGenerativeModel, ExactConditional):
    """What PixelCNN and Gated PixelCNN share: the output distributions, the exact
    ``log_prob``, the Pyro program and both samplers. The final classes choose the network.

    ``log_prob(x)`` is the exact discrete log-likelihood in nats, ``(N,)``. ``sample(n,
    method="fast" | "naive")`` draws integer levels, ``(n, C, H, W)``; both methods map the same
    uniforms to the same samples.
    """

    likelihood: ClassVar = "exact"
    conditioning_methods: ClassVar = ("exact-ancestral", "gibbs")
    Config: ClassVar = PixelCNNConfig
    default_objective: ClassVar = "mle"

    def __init__(self, config: PixelCNNConfig | None = None, **fields: Any) -> None:
        super().__init__(config, **fields)
        self.net = self._make_net(self.config)

    @staticmethod
    @abc.abstractmethod
    def _make_net(cfg: PixelCNNConfig) -> _Net:
        """The causal network of this family."""

    @property
    def conditional(self) -> bool:
        return self.config.num_classes is not None

    def extra_repr(self) -> str:
        cond = f", num_classes={self.config.num_classes}" if self.conditional else ""
        return f"{super().extra_repr()}, output={self.config.output_kind!r}{cond}"

    # ---- helpers ------------------------------------------------------------------------------

    def _scale(self, x: Tensor) -> Tensor:
        """Levels ``0..L-1`` -> ``[-1, 1]``, the scale the network reads."""
        return x * (2.0 / (self.config.levels - 1)) - 1.0

    @property
    def context_classes(self) -> int | None:
        return self.config.num_classes

    def _check_context(self, context: Tensor | None, n: int) -> Tensor | None:
        return self.check_context(context, n)

    def _subpixel_log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p of every sub-pixel, ``(N, C, H, W)``, from the net's ``(N, C*P, H, W)``."""
        cfg = self.config
        channels = cfg.event_shape[0]
        p = params.unflatten(1, (channels, cfg.params_per_subpixel)).permute(0, 1, 3, 4, 2)
        if cfg.output_kind == "categorical":
            return p.log_softmax(-1).gather(-1, x.long()[..., None])[..., 0]
        k = cfg.components
        d = DiscretizedLogisticMixture(
            p[..., :k], p[..., k : 2 * k], p[..., 2 * k :], cfg.levels, validate_args=False
        )
        return d.log_prob(x)

    def _draw(self, params: Tensor, u: Tensor) -> Tensor:
        """One sub-pixel per row from its parameters ``(N, P)`` and uniforms ``(N, 2)``."""
        cfg = self.config
        if cfg.output_kind == "categorical":
            return inverse_cdf(params, u[:, 0]).to(u.dtype)
        k = cfg.components
        d = DiscretizedLogisticMixture(
            params[:, :k],
            params[:, k : 2 * k],
            params[:, 2 * k :],
            cfg.levels,
            validate_args=False,
        )
        return d.draw(u)

    # ---- the protocol -------------------------------------------------------------------------

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        self._check_x(x)
        context = self._check_context(context, x.shape[0])
        params = self.net(self._scale(x), context)
        return self._subpixel_log_prob(params, x).sum((1, 2, 3))

    @pyro_program
    def model(self, x: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        if x is not None:
            n = x.shape[0]
        elif context is not None:
            n = torch.as_tensor(context).reshape(-1).shape[0]
        else:
            n = 1
        with pyro.plate("data", n):
            return pyro.sample("x", self.distribution(context), obs=x)

    @torch.no_grad()
    def _sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
        method: Literal["fast", "naive"] = "fast",
    ) -> Tensor:
        """Draw ``n`` images of integer levels, ``(n, C, H, W)``, one sub-pixel at a time.

        Arguments:
            n: number of images.
            seed: seeds a private generator (overrides ``generator``).
            generator: the source of the uniforms, on the model's device.
            context: labels ``(n,)`` (or one label for all) for a conditional model.
            method: ``"fast"`` computes only the activations each new pixel changes
                (Ramachandran et al. 2017); ``"naive"`` reruns the whole network per sub-pixel.
                Both use the same uniforms, so they return the same samples.

        Dropout is off while sampling (the model is put in eval mode and restored).
        """
        if method not in ("fast", "naive"):
            raise ValueError(f"method must be 'fast' or 'naive', got {method!r}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        context = self._check_context(context, n)
        param = next(self.parameters())
        generator = self.sampling_generator(seed, generator)
        channels, height, width = self.config.event_shape
        u = torch.rand(
            (n, channels, height, width, 2),
            generator=generator,
            device=param.device,
            dtype=param.dtype,
        )
        was_training = self.training
        self.eval()
        try:
            if method == "naive":
                return self._sample_naive(u, context)
            return self._sample_fast(u, context)
        finally:
            self.train(was_training)

    # ---- conditioning (ppgen.impute) ----------------------------------------------------------

    def _observed_sequence(self, observed: Tensor) -> Tensor:
        """``observed`` in sampling order (raster over pixels, channels within a pixel)."""
        return observed.to(self.net_device()).permute(1, 2, 0).reshape(-1)

    def net_device(self) -> torch.device:
        return next(self.parameters()).device

    def exact_conditional_reason(self, observed: Tensor) -> str | None:
        seq = self._observed_sequence(observed)
        if bool(seq[: int(seq.sum())].all()):
            return None
        return (
            "the observed sub-pixels are not a prefix of PixelCNN's raster order (e.g. "
            "bottom-half is; left-half is not)"
        )

    def log_prob_conditional(
        self, x: Tensor, observed: Tensor, context: Tensor | None = None
    ) -> Tensor:
        r""":math:`\log p(x_m \mid x_o)`: the sum of the missing sub-pixels' conditionals."""
        params = self.net(self._scale(x), context)
        per = self._subpixel_log_prob(params, x)  # (N, C, H, W)
        return (per * (~observed).to(per.dtype)).sum((1, 2, 3))

    @torch.no_grad()
    def sample_conditional(
        self, x: Tensor, observed: Tensor, num_samples: int, generator: torch.Generator,
        context: Tensor | None = None,
    ) -> Tensor:
        """The missing sub-pixels in raster order, each from its conditional given every
        sub-pixel before it (one pass of the network per missing sub-pixel)."""
        n, s = x.shape[0], num_samples
        channels, height, width = self.config.event_shape
        p = self.config.params_per_subpixel
        out = x.repeat(s, 1, 1, 1)
        ctx = None if context is None else context.repeat(s)
        u = torch.rand((s * n, channels, height, width, 2), generator=generator,
                       device=x.device, dtype=x.dtype)
        was_training = self.training
        self.eval()
        try:
            for r in range(height):
                for c in range(width):
                    for g in range(channels):
                        if bool(observed[g, r, c]):
                            continue
                        params = self.net(self._scale(out), ctx)[:, g * p : (g + 1) * p, r, c]
                        out[:, g, r, c] = self._draw(params, u[:, g, r, c])
        finally:
            self.train(was_training)
        return out.reshape(s, n, channels, height, width)

    def _sample_naive(self, u: Tensor, context: Tensor | None) -> Tensor:
        n, channels, height, width, _ = u.shape
        p = self.config.params_per_subpixel
        x = u.new_zeros(n, channels, height, width)
        for r in range(height):
            for c in range(width):
                for g in range(channels):
                    params = self.net(self._scale(x), context)[:, g * p : (g + 1) * p, r, c]
                    x[:, g, r, c] = self._draw(params, u[:, g, r, c])
        return x

    def _sample_fast(self, u: Tensor, context: Tensor | None) -> Tensor:
        n, channels, height, width, _ = u.shape
        p = self.config.params_per_subpixel
        x = u.new_zeros(n, channels, height, width)
        state = self.net.start(u, n, context)
        for r in range(height):
            for c in range(width):
                for g in range(channels):  # channel g's parameters see channels < g only
                    params = self.net.pixel(state, r, c)[:, g * p : (g + 1) * p]
                    x[:, g, r, c] = value = self._draw(params, u[:, g, r, c])
                    self.net.write(state, r, c, g, self._scale(value))
            self.net.end_row(state, r)
        return x


class PixelCNN(AbstractPixelCNN):
    r"""PixelCNN: masked convolutions and residual blocks over the pixels in raster order.

    .. math:: p(x) = \prod_i \prod_c p(x_{i,c} \mid x_{<i}, x_{i,<c})

    A ``first_kernel_size`` mask-A convolution, one residual block per entry of ``hidden``
    (1x1, ``kernel_size`` mask B, 1x1), and a two-layer 1x1 head giving each sub-pixel's
    categorical logits or logistic-mixture parameters. Its receptive field has the classic
    blind spot above and to the right (:class:`GatedPixelCNN` removes it).

    References:
        van den Oord, Kalchbrenner and Kavukcuoglu (2016), "Pixel Recurrent Neural Networks",
        arXiv:1601.06759. Salimans et al. (2017), "PixelCNN++", arXiv:1701.05517.
        Ramachandran et al. (2017), "Fast Generation for Convolutional Autoregressive Models",
        arXiv:1704.06001.

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("digits", split="val")
        >>> m = ppgen.build("pixelcnn", ds, hidden=[16])
        >>> m.log_prob(ds.data[:3]).shape, m.sample(2, seed=0).shape
        (torch.Size([3]), torch.Size([2, 1, 8, 8]))
    """

    @staticmethod
    def _make_net(cfg: PixelCNNConfig) -> _Net:
        return _PixelCNNNet(cfg)


class GatedPixelCNN(AbstractPixelCNN):
    r"""Gated PixelCNN: vertical and horizontal stacks with gated activations, no blind spot.

    .. math:: y = \tanh(W_f * x + V_f c) \odot \sigma(W_g * x + V_g c)

    One gated layer with ``first_kernel_size`` (mask A in the horizontal stack) and one per
    entry of ``hidden`` with ``kernel_size`` (mask B), then a two-layer 1x1 head. The vertical
    stack sees the rows above (its pre-activations reach the horizontal stack shifted down one
    row); the horizontal stack sees the current row up to the pixel, so every earlier pixel
    within the receptive field is seen. With ``num_classes`` set, ``c`` is a learned per-class
    bias of every gate and ``context`` carries the labels.

    References:
        van den Oord et al. (2016), "Conditional Image Generation with PixelCNN Decoders",
        arXiv:1606.05328. Ramachandran et al. (2017), "Fast Generation for Convolutional
        Autoregressive Models", arXiv:1704.06001.

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("digits", split="val")
        >>> m = ppgen.build("gated-pixelcnn", ds, hidden=[16], num_classes=10)
        >>> m.log_prob(ds.data[:3], context=ds.labels[:3]).shape
        torch.Size([3])
        >>> m.sample(2, seed=0, context=torch.tensor([3, 7])).shape
        torch.Size([2, 1, 8, 8])
    """

    @staticmethod
    def _make_net(cfg: PixelCNNConfig) -> _Net:
        return _GatedPixelCNNNet(cfg)
