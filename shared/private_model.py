"""Can DP-SGD train this model? Opacus's ``ModuleValidator`` decides, and can fix it.

Opacus refuses layers whose per-example gradients it cannot compute or that mix
the examples of a batch (BatchNorm), and ships drop-in replacements for some
(``ModuleValidator.fix``: BatchNorm → GroupNorm, ``nn.LSTM`` → ``DPLSTM``, …).
fedge checks a model before any process starts (``fedge simulate``, the
coordinator) and again on each node, and with ``fix-model = true`` applies
Opacus's own fix wherever the model is built, so every party trains the same
network.

Opacus validates only layers with trainable parameters. A BatchNorm (or an
InstanceNorm keeping running statistics) that is frozen still normalises with
the batch's statistics in training mode and updates buffers that are sent with
the model, so it is refused here too.

Importing Opacus costs seconds on every message of a deployed node, so it is
imported only when the model holds a layer type Opacus has a rule for: the
registry models hold none, and pass without it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from torch import nn

from fedge.shared.errors import ModelError

if TYPE_CHECKING:
    from fedge.shared.config import RunConfig
    from fedge.shared.models import ModelSpec

logger = logging.getLogger(__name__)

# Every layer type opacus/validators/ registers a rule for is one of these (or a
# subclass). A model holding none passes ModuleValidator.validate (which checks
# nothing else but training mode) and ModuleValidator.fix changes nothing.
_OPACUS_RULED = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.RNNBase,
    nn.MultiheadAttention,
)
# Layers that, even frozen, mix a batch's examples or learn from them in buffers.
_MIXING = (nn.modules.batchnorm._BatchNorm,)
FIX_HINT = (
    "set fix-model = true to let Opacus's ModuleValidator.fix replace the "
    "layers it can (BatchNorm → GroupNorm, LSTM → DPLSTM, GRU → DPGRU, "
    "MultiheadAttention → DPMultiheadAttention), or change the model's code"
)


def needs_opacus_check(model: nn.Module) -> bool:
    """Whether ``model`` holds a layer type Opacus's validator has a rule for."""
    return any(isinstance(m, _OPACUS_RULED) for m in model.modules())


def private_model_problems(model: nn.Module) -> list[str]:
    """Every layer DP-SGD cannot train, as ``"path (Type): reason"`` (empty = fine).

    Uses ``opacus.validators.ModuleValidator`` (imported only when
    :func:`needs_opacus_check`), whose errors name no layer: they are
    attributed here by running each layer's registered rule on it.
    """
    if not needs_opacus_check(model):
        return []
    from opacus.validators import ModuleValidator

    problems = []
    for name, module in model.named_modules():
        label = f"{name or '<root>'} ({type(module).__name__})"
        trainable = any(p.requires_grad for p in module.parameters(recurse=False))
        check = ModuleValidator.VALIDATORS.get(type(module))
        errors = check(module) if check is not None and trainable else []
        for error in errors:
            first = str(error).split(". ")[0].rstrip(".")
            problems.append(f"{label}: {first}")
        if not errors and _running_statistics(module):
            problems.append(
                f"{label}: a frozen (or parameter-free) layer that keeps running "
                "statistics still learns them from the private batch in training "
                "mode, and they are sent with the model (fix-model replaces only "
                "trainable layers: replace it with GroupNorm in the model's code)"
            )
    return problems


def _running_statistics(module: nn.Module) -> bool:
    """Tell whether a layer mixes the batch or learns running statistics from it."""
    if isinstance(module, _MIXING):
        return True
    return isinstance(module, nn.modules.instancenorm._InstanceNorm) and bool(
        module.track_running_stats
    )


def check_private_model(model: nn.Module) -> None:
    """Raise :class:`ModelError` naming every layer DP-SGD cannot train.

    Raises
    ------
    ModelError
        ``Opacus cannot train this model with DP-SGD: bn (BatchNorm2d): ...``
        with the fix (``fix-model = true``).
    """
    was_training = model.training
    model.train()  # Opacus's validator also refuses a model in eval mode
    try:
        problems = private_model_problems(model)
    finally:
        model.train(was_training)
    if problems:
        raise ModelError(
            "Opacus cannot train this model with DP-SGD: "
            + "; ".join(problems)
            + f". Nothing was trained: {FIX_HINT}."
        )


def fix_private_model(model: nn.Module) -> nn.Module:
    """Return ``model`` with Opacus's ``ModuleValidator.fix`` applied; log each swap.

    The fix is deterministic (a replacement layer starts from its defaults or
    the replaced layer's weights), so the coordinator and every node that
    apply it to the same network get the same one. A model with nothing to fix
    is returned as is, without importing Opacus.
    """
    if not needs_opacus_check(model):
        return model
    from opacus.validators import ModuleValidator

    before = {name: type(m).__name__ for name, m in model.named_modules()}
    fixed: nn.Module = ModuleValidator.fix(model)
    for name, module in fixed.named_modules():
        old = before.get(name)
        if old is not None and old != type(module).__name__:
            logger.info(
                "fix-model: replaced %s (%s) with %s (Opacus's ModuleValidator.fix)",
                name or "<root>",
                old,
                type(module).__name__,
            )
    return fixed


def check_model_for_run(config: RunConfig, spec: ModelSpec) -> None:
    """Refuse a DP-SGD run whose model Opacus cannot train, before anything runs.

    Builds the model ``spec`` describes (with ``fix-model`` applied when set),
    freezes what ``trainable`` leaves frozen, and checks it with
    :func:`check_private_model` when ``dp-mode`` is ``"sample"``; other modes
    train any model.

    Raises
    ------
    ModelError
        Naming every layer DP-SGD cannot train, and the fix.
    ConfigError
        A ``trainable`` glob that matches no parameter.
    """
    if config.dp.mode != "sample":
        return
    from fedge.shared.models import build_model
    from fedge.shared.trainable import freeze, select_trainable

    model = build_model(spec)
    # As every node trains it: a layer ``trainable`` leaves frozen gets no
    # gradient, so Opacus's rules for trainable layers do not apply to it.
    freeze(model, select_trainable(model, config.train.trainable))
    check_private_model(model)
