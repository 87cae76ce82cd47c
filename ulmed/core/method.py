"""The protection-method interface and its registry.

A method turns a record into a protected record. It works in [0, 1] space: it receives
the record's unit image and its budget in unit terms, returns a perturbation, and this
base class projects it onto the budget and maps it back to native values. Methods that
optimise over a whole data set (EM, SALM) override :meth:`ProtectionMethod.fit`.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np

from ulmed.core.budget import DEFAULT_BUDGET, Budget, psnr_share
from ulmed.core.projection import project
from ulmed.core.registry import Registry
from ulmed.core.tasks import Norm
from ulmed.errors import ConfigError
from ulmed.io.record import Record

#: The method used when none is named: the one with the largest measured effect so far
#: (README, "Measured"): the mask-coded patterns of ``lsp``.
DEFAULT_METHOD = "lsp"

#: Every protection method, by name (``ulmed protect --method NAME``).
METHODS: Registry[type[ProtectionMethod]] = Registry("method")


M = TypeVar("M", bound=type)


def takes_options(options: type) -> Callable[[M], M]:
    """Class decorator: ``__init__(self, budget, seed, device, **options)`` shows the fields of ``options``.

    A method whose settings are a dataclass takes them as ``**options`` and builds the
    dataclass (which validates them). This decorator gives that ``__init__`` the signature
    and annotations it would have if it spelled every field out as a keyword parameter, so
    :func:`inspect.signature`, ``help()`` and the ``--set KEY=VALUE`` checks of the pipeline
    (:mod:`ulmed.pipeline.method_options`) list each option with its type and default.

    Args:
        options: A dataclass whose fields are the method's keyword options.
    """
    hints = typing.get_type_hints(options)
    fields = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
              for f in dataclasses.fields(options)]

    def decorate(cls: M) -> M:
        init = cls.__dict__["__init__"]
        own = [p for p in inspect.signature(init).parameters.values() if p.kind is not p.VAR_KEYWORD]
        init.__signature__ = inspect.Signature([*own, *fields], return_annotation=None)
        init.__annotations__ = {**typing.get_type_hints(init), **{f.name: f.annotation for f in fields}}
        return cls

    return decorate


def record_seed(seed: int, key: str) -> int:
    """A per-record seed derived from the run seed and the record key.

    Results then do not depend on the order in which records are processed, which is what
    makes sharded and resumed runs agree with a single run.
    """
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


class ProtectionMethod(abc.ABC):
    """Base class of all protection methods.

    Args:
        budget: The budget (text such as ``"auto"``, ``"8/255"``, ``"l2:0.5"`` or a :class:`Budget`);
            its norm must be one of the class's :attr:`norms`. The default ``auto`` is 8/255 at a
            PSNR of at least 38 dB on images and 16/255 at 40 dB on DICOM and NIfTI records
            (:meth:`ulmed.core.budget.Budget.auto`).
        seed: Run seed; per-record randomness is derived from it with :func:`record_seed`.
        device: Torch device name for methods that use one.
    """

    name: ClassVar[str] = ""
    #: True when :meth:`fit` must see the data set before :meth:`perturbation` is called.
    needs_fit: ClassVar[bool] = False
    #: How to cite the paper the method follows (release data cards print it); empty for
    #: controls that follow no paper.
    citation: ClassVar[str] = ""
    #: Budget norms the method honours; a budget in another norm is refused by the constructor.
    norms: ClassVar[tuple[str, ...]] = (Norm.LINF,)
    #: Why the method honours only these norms (ends the refusal message); empty: no reason given.
    norm_reason: ClassVar[str] = ""
    #: How many records the pipeline hands to :meth:`protect_many` at once (1: one at a time);
    #: a method that shares work across records (one forward pass for many images) sets more.
    batch_hint: int = 1

    def __init__(self, budget: Budget | str | float = DEFAULT_BUDGET, seed: int = 0, device: str = "auto") -> None:
        self.budget = budget if isinstance(budget, Budget) else Budget.parse(budget)
        if self.budget.norm not in self.norms:
            raise ConfigError(self._norm_refusal())
        if not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        self.device = device

    def _norm_refusal(self) -> str:
        norm = self.budget.norm
        others = [n for n in METHODS.names() if norm in METHODS.get(n).norms]
        why = f" ({self.norm_reason})" if self.norm_reason else ""
        return (f"method {self.name!r} does not support {norm.upper()} budgets such as {self.budget.spec!r}{why}; "
                f"give an L-inf budget (8/255, 20HU) or use a method that supports {norm.upper()}: "
                f"{', '.join(others) or 'none registered'}")

    def fit(self, records: Sequence[Record]) -> None:  # noqa: B027 - optional hook
        """Optimise whatever the method shares across records (default: nothing)."""

    @abc.abstractmethod
    def perturbation(self, record: Record, unit_image: np.ndarray, eps: float) -> np.ndarray:
        """Return the perturbation (same shape as ``unit_image``) for one record.

        Args:
            record: The record (its target may guide the method).
            unit_image: The record's image in [0, 1] space, channel-first.
            eps: The budget in [0, 1] units for this record.
        """

    def protect(self, record: Record) -> Record:
        """Protect one record: perturb, project onto the budget, clip, quantise to stored values.

        The result holds the values the writer will store: the budget (in its norm) holds
        on them exactly, and metrics taken on them are those of the written file.
        """
        eps = self.budget.in_unit(record.mapping)
        unit = record.unit_image()
        return self.apply(record, self.perturbation(record, unit, eps), eps)

    def protect_many(self, records: Sequence[Record]) -> list[Record]:
        """Protect several records; the same result as :meth:`protect` on each, in order.

        The default calls :meth:`protect` record by record. A method that can share work
        across records overrides it (and sets :attr:`batch_hint`); its results must equal
        :meth:`protect`'s.
        """
        return [self.protect(r) for r in records]

    def apply(self, record: Record, delta: np.ndarray, eps: float, share: float | None = None) -> Record:
        """The record with ``delta`` projected onto the budget and added, as stored (the end of :meth:`protect`).

        Args:
            record: The record the perturbation is for.
            delta: The method's perturbation in [0, 1] units, shaped like the image.
            eps: The budget in [0, 1] units for this record.
            share: The part of the budget (at most 1) this record may use, ``delta`` already scaled
                to it. None (default): :meth:`floor_share`, and ``delta`` is scaled here. The
                perturbation is projected and quantised within that share of the budget; below 1
                (a PSNR floor binds) each change is rounded toward zero, so the floor holds on the
                stored values.

        Raises:
            ConfigError: ``delta`` is not shaped like the record's image.
        """
        delta = np.asarray(delta)
        if delta.shape != record.image.shape:
            raise ConfigError(f"{self.name} returned a perturbation of shape {delta.shape} "
                              f"for an image of shape {record.image.shape}")
        if share is None:
            share = self.floor_share(record, delta)
            if share < 1:
                delta = delta * np.float32(share)  # a new array: the method's own is left as it is
        norm, eps, eps_native = self.budget.norm, eps * share, self.budget.in_native(record.mapping) * share
        if norm == Norm.LINF:  # clipped in float64 slab by slab there; the method's array untouched
            return record.with_perturbation(delta, eps_native, norm, clip=eps, toward_zero=share < 1)
        delta = project(np.array(delta, dtype=np.float64), eps, norm)  # our own copy, projected in place
        return record.with_perturbation(delta, eps_native, norm, toward_zero=share < 1)

    def psnr_floor(self, record: Record) -> float | None:
        """The PSNR floor in dB on ``record`` against its budget range (the budget's; None: none)."""
        return self.budget.psnr_floor(record.mapping)

    def floor_share(self, record: Record, delta: np.ndarray) -> float:
        """The factor (at most 1) that brings ``delta`` to :meth:`psnr_floor` (1 without a floor)."""
        floor = self.psnr_floor(record)
        if floor is None:
            return 1.0
        return psnr_share(delta, floor, record.mapping.budget_scale / record.mapping.scale)

    def params(self) -> dict[str, Any]:
        """Parameters that define the output, recorded in the manifest."""
        return {"method": self.name, "budget": self.budget.spec, "seed": self.seed}

    def fit_report(self) -> dict[str, Any]:
        """What :meth:`fit` found (per-round history, choices made), for the manifest; {} if nothing."""
        return {}

    def note(self, record: Record) -> str | None:
        """A remark on how this record was protected, for its manifest entry (default: none)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What a chunked run must save between chunks to resume exactly (tensors and numbers only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Continue from :meth:`state_dict` (default: nothing to restore)."""
