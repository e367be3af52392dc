"""SGD with momentum for local training, without ``torch.optim``.

Constructing or stepping any ``torch.optim`` optimiser imports ``torch._dynamo``
(``torch._disable_dynamo`` and ``_use_grad`` import it lazily on first use):
1.5-6 s of CPU measured on this 2-core machine, more than ``import torch``
itself. A deployed node pays every import on every message (Flower starts a
fresh ``flwr-clientapp`` process per message), and three nodes on two cores pay
it three times per round. The update here is ``torch.optim.SGD``'s own (no
dampening, no Nesterov, no weight decay), done with torch's ``_foreach`` ops
as its default implementation does; tests compare it with ``torch.optim.SGD``
step by step. Opacus's ``DPOptimizer`` still wraps a real ``torch.optim.SGD``:
that path imports Opacus anyway.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class MomentumSGD:
    """``torch.optim.SGD(params, lr, momentum)`` without the ``torch.optim`` import cost.

    Parameters
    ----------
    params : iterable of Tensor
        The parameters to update in place from their ``.grad``.
    lr : float
        Learning rate.
    momentum : float
        Momentum factor; 0 is plain SGD.
    """

    def __init__(
        self, params: Iterable[torch.Tensor], *, lr: float, momentum: float
    ) -> None:
        self.params = list(params)
        self.lr = lr
        self.momentum = momentum
        # One buffer per parameter, created (as torch does) from its first gradient.
        self._buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (``set_to_none``, torch's default)."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient; skip those without one."""
        params, steps = [], []
        with torch.no_grad():
            for i, p in enumerate(self.params):
                grad = p.grad
                if grad is None:
                    continue
                if self.momentum != 0:
                    buffer = self._buffers[i]
                    if buffer is None:
                        buffer = self._buffers[i] = torch.clone(grad).detach()
                    else:
                        buffer.mul_(self.momentum).add_(grad)
                    grad = buffer
                params.append(p)
                steps.append(grad)
            if params:
                torch._foreach_add_(params, steps, alpha=-self.lr)
