"""Per-sample clipped gradient sums by book-keeping, without a second backward.

DP-SGD needs, for each batch, ``sum_i g_i * min(1, C / ||g_i||)`` where ``g_i``
is example i's gradient over all parameters. Opacus's default (``hooks``) mode
materialises every ``g_i`` for every parameter, then clips and sums them in
Python loops over parameters. For the small Linear/Conv2d/GroupNorm networks in
the model registry that costs 3-4x a plain step on a CPU (Conv1d is the 2-D
case with maps of height 1; a Linear layer that runs once per step of a
recurrent layer, as in Opacus's DPGRU, sums its calls). Book-keeping (Bu et
al., 2022, "Differentially Private Optimization on Large Model at Small Cost")
does it in one forward and one backward:

1. the forward stores each layer's input ``a`` (forward hooks);
2. one ``autograd.grad`` gives the loss gradient ``b`` at each layer's output,
   and skips the weight-gradient kernels a plain backward would run;
3. per-sample norms come from ``a`` and ``b`` directly: for a Linear layer
   ``||g_i||^2 = (||a_i||^2 + 1) ||b_i||^2`` (the "ghost norm" of Goodfellow,
   2015 / Li et al., 2022) without forming ``g_i``; Conv2d and GroupNorm
   per-sample gradients are small here, so they are formed once with ``bmm``;
4. the clipped sum is one weighted product per layer: ``(c * b)^T a``.

With augmentation multiplicity (De et al., 2022; :mod:`fedge.shared.augmentation`)
the batch holds K views of each example in consecutive rows, and an example's
gradient is the mean of its views' gradients, formed before the clip: a
Linear layer's K views become K positions of one example (its per-example
gradient is then formed with ``bmm``), other layers' per-row gradients are
averaged over each example's K rows.

The clipping factor is Opacus's: ``min(1, C / (||g_i|| + 1e-6))``; tests check
the result against Opacus's ``grad_sample_mode="hooks"``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fedge.shared.errors import ModelError

# Opacus's clip-factor guard against division by zero, kept for equal results.
_NORM_EPS = 1e-6


def unsupported_layers(model: nn.Module) -> list[str]:
    """Layers with trainable parameters this module cannot handle (empty = fine).

    Supported: ``nn.Linear`` and Opacus's ``RNNLinear`` (the per-step layers of
    its DP recurrent layers, which run once per step: their per-sample gradients
    sum over the calls); ``nn.Conv1d`` and ``nn.Conv2d`` with ``groups=1``, zero
    padding given as integers; ``nn.GroupNorm``. Any other module owning a
    trainable parameter is listed as ``"name (Type)"``.
    """
    problems = []
    for name, module in model.named_modules():
        if not _own_trainable(module):
            continue
        label = f"{name or '<root>'} ({type(module).__name__})"
        if type(module) in (nn.Conv1d, nn.Conv2d):
            if (
                module.groups != 1
                or module.padding_mode != "zeros"
                or isinstance(module.padding, str)
            ):
                problems.append(label + ": needs groups=1 and integer zero padding")
        elif type(module) is not nn.GroupNorm and not _is_linear(module):
            problems.append(label)
    return problems


def _own_trainable(module: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters a module holds itself, not through a submodule.

    Opacus's DP recurrent layers register their cells' parameters again under
    ``nn.GRU``'s names (``weight_ih_l0`` …); those aliases belong to the cells.
    """
    inner = {id(p) for child in module.children() for p in child.parameters()}
    return [
        p
        for p in module.parameters(recurse=False)
        if p.requires_grad and id(p) not in inner
    ]


def _is_linear(module: nn.Module) -> bool:
    """``nn.Linear``, or Opacus's ``RNNLinear`` (a subclass adding nothing)."""
    return type(module) is nn.Linear or (
        type(module).__name__ == "RNNLinear"
        and type(module).__module__.startswith("opacus.")
    )


class ClippedGradients:
    """Per-sample clipped gradient sums for a model, computed by book-keeping.

    Parameters
    ----------
    model : nn.Module
        Made of the layers :func:`unsupported_layers` accepts. Forward hooks are
        added; call :meth:`close` (or use ``with``) to remove them.

    Attributes
    ----------
    params : list of Parameter
        The trainable parameters, in ``model.parameters()`` order.
    flat_grad : Tensor
        One buffer holding every result of :meth:`clipped_sum` back to back,
        so noise is added in one call; overwritten by each call.

    Raises
    ------
    ModelError
        If a trainable layer is unsupported.
    """

    def __init__(self, model: nn.Module) -> None:
        problems = unsupported_layers(model)
        if problems:
            raise ModelError(
                "The fast DP-SGD path cannot compute per-sample gradients for: "
                + "; ".join(problems)
                + ". Use grad_sample_mode='hooks' (Opacus) for this model."
            )
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        sizes = [p.numel() for p in self.params]
        self.flat_grad = torch.zeros(sum(sizes))
        self._grads = [
            g.view_as(p)
            for g, p in zip(self.flat_grad.split(sizes), self.params, strict=True)
        ]
        index = {id(p): i for i, p in enumerate(self.params)}
        self._layers: dict[nn.Module, _Layer] = {}
        self._handles = []
        for module in model.modules():
            if _own_trainable(module):
                self._layers[module] = _make_layer(module, index)
                self._handles.append(module.register_forward_hook(self._record))
        self._tape: list[tuple[_Layer, torch.Tensor, torch.Tensor]] = []

    def _record(
        self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        self._tape.append((self._layers[module], inputs[0].detach(), output))

    def close(self) -> None:
        """Remove the forward hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> ClippedGradients:
        """Use as a context manager: the hooks are removed on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Remove the hooks (:meth:`close`)."""
        self.close()

    def _backward(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[_Layer, torch.Tensor, torch.Tensor]]]:
        """Forward + backward to each layer's output; sum of per-row losses."""
        self._tape = []
        try:
            loss = F.cross_entropy(self.model(x), y, reduction="sum")
            tape = self._tape
        finally:
            self._tape = []
        repeated = {id(layer) for layer, _, _ in tape if not isinstance(layer, _Linear)}
        if len(repeated) != sum(not isinstance(layer, _Linear) for layer, _, _ in tape):
            raise ModelError(
                "A convolution or normalisation layer ran more than once in one "
                "forward pass (shared weights); the fast DP-SGD path needs each "
                "such layer once. Use grad_sample_mode='hooks'."
            )
        backprops = torch.autograd.grad(
            loss, [out for _, _, out in tape], allow_unused=True
        )
        calls: dict[int, list[tuple[_Layer, torch.Tensor, torch.Tensor]]] = {}
        for (layer, a, out), b in zip(tape, backprops, strict=True):
            calls.setdefault(id(layer), []).append(
                (layer, a, torch.zeros_like(out) if b is None else b)
            )
        entries = [
            group[0] if len(group) == 1 else _stack_calls(group)
            for group in calls.values()
        ]
        return loss.detach(), entries

    def clipped_sum(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        max_grad_norm: float,
        scale: float = 1.0,
        views: int = 1,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """``scale * sum_i clip_C(g_i)`` for one batch of examples.

        Parameters
        ----------
        x, y : Tensor
            A batch of inputs and integer labels (may be empty: zeros). With
            ``views`` K > 1, ``x`` holds K rows per label: example i's views
            are rows ``i*K`` to ``i*K + K - 1``.
        max_grad_norm : float
            Clipping bound C on each example's gradient (all parameters).
        scale : float, default 1
            Multiplies the sum (folded into the clip factors: no extra pass).
        views : int, default 1
            K: example i's gradient ``g_i`` is the mean of its K views'
            gradients, clipped as one.

        Returns
        -------
        grads : list of Tensor
            One per trainable parameter, in ``model.parameters()`` order; views
            of :attr:`flat_grad`, overwritten by the next call.
        loss_sum : Tensor
            Sum of the per-example cross-entropy losses (each the mean over its
            views; scalar).
        norms : Tensor
            Each example's gradient norm before clipping, shape ``(B,)``.

        Raises
        ------
        ValueError
            If ``x`` does not hold ``views`` rows per label.
        """
        if len(x) != views * len(y):
            raise ValueError(
                f"clipped_sum needs {views} input rows per label (views), got "
                f"{len(x)} rows for {len(y)} labels."
            )
        if len(y) == 0:
            self.flat_grad.zero_()
            return self._grads, torch.zeros(()), torch.zeros(0)
        loss_sum, entries = self._backward(x, y.repeat_interleave(views))
        loss_sum = loss_sum / views
        finishers = []
        squared = torch.zeros(len(y), dtype=loss_sum.dtype, device=loss_sum.device)
        for layer, a, b in entries:
            sq, finish = layer.norms(a, b, views)
            squared = squared + sq
            finishers.append(finish)
        norms = squared.sqrt()
        factors = (max_grad_norm / (norms + _NORM_EPS)).clamp(max=1.0)
        if scale != 1.0:
            factors = factors * scale
        written = 0
        for finish in finishers:
            written += finish(factors, self._grads)
        if written != len(self.params):  # some layer did not run: no gradient
            self.flat_grad.zero_()
            for finish in finishers:
                finish(factors, self._grads)
        return self._grads, loss_sum, norms

    def per_sample_gradients(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> list[torch.Tensor]:
        """Every example's unclipped gradient, shape ``(B, *param.shape)``.

        For tests and inspection: the training path never forms these for
        Linear layers.
        """
        _, entries = self._backward(x, y)
        out = [torch.zeros(len(x), *p.shape) for p in self.params]
        for layer, a, b in entries:
            for i, g in layer.per_sample(a, b):
                out[i] = g.reshape(len(x), *self.params[i].shape)
        return out


def _stack_calls(
    group: list[tuple[_Layer, torch.Tensor, torch.Tensor]],
) -> tuple[_Layer, torch.Tensor, torch.Tensor]:
    """Merge a Linear layer's several calls (a recurrent step) into one.

    Its gradient is the sum over calls of ``b a^T``, which is what one call on
    the inputs concatenated along a position axis gives.
    """
    layer = group[0][0]
    a = torch.cat([a.reshape(len(a), -1, a.shape[-1]) for _, a, _ in group], dim=1)
    b = torch.cat([b.reshape(len(b), -1, b.shape[-1]) for _, _, b in group], dim=1)
    return layer, a, b


# ----------------------------------------------------------------- layer rules
# Each rule turns (a = layer input, b = dLoss/dOutput) into per-sample squared
# norms plus a finisher: given the clip factors, it writes each of its
# parameters' clipped sums into the output list and returns how many it wrote.
Finisher = Callable[[torch.Tensor, list[torch.Tensor]], int]


class _Layer:
    def __init__(self, module: nn.Module, weight: int | None, bias: int | None):
        self.module = module
        # Indices into the trainable parameter list (None: frozen or absent).
        self.slots = [i for i in (weight, bias) if i is not None]
        self.weight = weight
        self.bias = bias

    def per_sample(
        self, a: torch.Tensor, b: torch.Tensor
    ) -> list[tuple[int, torch.Tensor]]:
        """``(param index, per-sample gradients flattened to (B, numel))``."""
        raise NotImplementedError

    def norms(
        self, a: torch.Tensor, b: torch.Tensor, views: int = 1
    ) -> tuple[torch.Tensor, Finisher]:
        """Dense default: form the per-sample gradients, then weight and sum.

        ``views`` K > 1: rows come in groups of K views of one example, whose
        gradients are averaged into the example's before any norm.
        """
        flat = self.per_sample(a, b)
        if views > 1:
            flat = [(i, g.view(-1, views, g.shape[1]).mean(1)) for i, g in flat]
        sq = sum(_squared_norms(g) for _, g in flat)

        def finish(factors: torch.Tensor, out: list[torch.Tensor]) -> int:
            for i, g in flat:
                torch.mv(g.t(), factors, out=out[i].view(-1))
            return len(flat)

        return sq, finish


def _make_layer(module: nn.Module, index: dict[int, int]) -> _Layer:
    def idx(p: torch.Tensor | None) -> int | None:
        return index.get(id(p)) if p is not None else None

    if _is_linear(module):
        return _Linear(module, idx(module.weight), idx(module.bias))
    kind = {nn.Conv1d: _Conv1d, nn.Conv2d: _Conv2d, nn.GroupNorm: _GroupNorm}
    return kind[type(module)](module, idx(module.weight), idx(module.bias))


class _Linear(_Layer):
    """Ghost norm: g_i = b_i a_i^T, so ||g_i||^2 = ||a_i||^2 ||b_i||^2."""

    def per_sample(
        self, a: torch.Tensor, b: torch.Tensor
    ) -> list[tuple[int, torch.Tensor]]:
        a3 = a.reshape(len(a), -1, a.shape[-1])
        b3 = b.reshape(len(b), -1, b.shape[-1])
        out = []
        if self.weight is not None:
            out.append((self.weight, torch.bmm(b3.transpose(1, 2), a3).flatten(1)))
        if self.bias is not None:
            out.append((self.bias, b3.sum(1)))
        return out

    def norms(
        self, a: torch.Tensor, b: torch.Tensor, views: int = 1
    ) -> tuple[torch.Tensor, Finisher]:
        if views > 1:  # an example's K views are K positions of its input
            a = a.reshape(len(a) // views, -1, a.shape[-1])
            b = b.reshape(len(b) // views, -1, b.shape[-1]) / views
        if a.dim() > 2:  # (B, ..., d): a sum over positions; form g_i instead
            return super().norms(a, b)
        b_sq = _squared_norms(b)
        if self.weight is None:
            sq = b_sq
        elif self.bias is None:
            sq = _squared_norms(a) * b_sq
        else:
            sq = (_squared_norms(a) + 1) * b_sq

        def finish(factors: torch.Tensor, out: list[torch.Tensor]) -> int:
            scaled = b * factors[:, None]
            if self.weight is not None:
                torch.mm(scaled.t(), a, out=out[self.weight])
            if self.bias is not None:
                torch.sum(scaled, 0, out=out[self.bias])
            return len(self.slots)

        return sq, finish


class _Conv2d(_Layer):
    """Per-sample weight gradients of a convolution, in one kernel call.

    Layers with several input channels use the grouped-convolution trick: fold
    the batch into the channels, and the weight gradient of a convolution with
    ``groups=B`` is every example's own weight gradient (PyTorch's public
    ``torch.nn.grad.conv2d_weight``). For a few input channels that
    kernel is slow, and an im2col ``bmm`` (strided view of the padded input,
    copied once; ``F.unfold`` is slower) is faster.
    """

    # Measured on a CPU, one thread: im2col wins up to 4 input channels, grouped
    # from 8 (batch 64, 8x8 maps).
    _GROUPED_MIN_CHANNELS = 6

    def _geometry(
        self,
    ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
        """Kernel size, stride, padding and dilation, each (height, width)."""
        m = self.module
        return m.kernel_size, m.stride, m.padding, m.dilation

    def _weight_per_sample(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-sample weight gradients, ``(B, C_out * C_in * kh * kw)``."""
        m = self.module
        kernel, stride, padding, dilation = self._geometry()
        batch, channels = a.shape[:2]
        if channels >= self._GROUPED_MIN_CHANNELS:
            grad = torch.nn.grad.conv2d_weight(
                a.reshape(1, batch * channels, *a.shape[2:]),
                (batch * m.out_channels, channels, *kernel),
                b.reshape(1, batch * m.out_channels, *b.shape[2:]),
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=batch,
            )
            return grad.view(batch, -1)
        (ph, pw), (sh, sw), (dh, dw) = padding, stride, dilation
        kh, kw = kernel
        if ph or pw:
            a = F.pad(a, (pw, pw, ph, ph))
        out_h, out_w = b.shape[2:]
        s_b, s_c, s_h, s_w = a.stride()
        cols = a.as_strided(
            (batch, channels, kh, kw, out_h, out_w),
            (s_b, s_c, s_h * dh, s_w * dw, s_h * sh, s_w * sw),
        ).reshape(batch, channels * kh * kw, out_h * out_w)
        return torch.bmm(b.flatten(2), cols.transpose(1, 2)).view(batch, -1)

    def per_sample(
        self, a: torch.Tensor, b: torch.Tensor
    ) -> list[tuple[int, torch.Tensor]]:
        out = []
        if self.weight is not None:
            out.append((self.weight, self._weight_per_sample(a, b)))
        if self.bias is not None:
            out.append((self.bias, b.flatten(2).sum(2)))
        return out


class _Conv1d(_Conv2d):
    """A 1-D convolution is a 2-D one over maps of height 1 with a 1 x k kernel."""

    def _geometry(
        self,
    ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
        m = self.module
        return (
            (1, m.kernel_size[0]),
            (1, m.stride[0]),
            (0, m.padding[0]),
            (1, m.dilation[0]),
        )

    def per_sample(
        self, a: torch.Tensor, b: torch.Tensor
    ) -> list[tuple[int, torch.Tensor]]:
        return super().per_sample(a.unsqueeze(2), b.unsqueeze(2))


class _GroupNorm(_Layer):
    """g_i(weight) = sum over positions of b_i * x̂_i; g_i(bias) = sum of b_i."""

    def per_sample(
        self, a: torch.Tensor, b: torch.Tensor
    ) -> list[tuple[int, torch.Tensor]]:
        m = self.module
        out = []
        if self.weight is not None:
            normalised = F.group_norm(a, m.num_groups, eps=m.eps)
            out.append((self.weight, (b * normalised).flatten(2).sum(2)))
        if self.bias is not None:
            out.append((self.bias, b.flatten(2).sum(2)))
        return out


def _squared_norms(rows: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of each row of a 2-D tensor (vector_norm is the fast kernel)."""
    return torch.linalg.vector_norm(rows, dim=1).square()
