"""A differentiable Bayes-error objective for unlearnable-example noise.

After Zhang et al., "Towards Provably Unlearnable Examples via Bayes Error Optimisation":
noise that raises the Bayes error of the protected data stays effective when the protected
data is mixed with clean data. The Bayes error is estimated by plugging a leave-one-out
Gaussian-kernel (Nadaraya-Watson) class posterior into ``mean_i (1 - max_c p_ic)``; the
estimate is differentiable in the features, so projected gradient *ascent* on the
perturbation raises it. :class:`BayesErrorObjective` returns minus the estimate, a loss to
minimise, for the shared PGD engine.

Features come from a network layer (:class:`FeatureTap`), from the logits, or — with no
model at all — from the input patch around each sampled pixel (:func:`patch_features`).
For segmentation, :func:`pixel_features` turns the per-pixel problem into the sample set
the estimator needs.

All kernel arithmetic is done in float64 and in log space, so far-apart points never give
0/0; the posterior is returned in the features' dtype.
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ulmed.core.tasks import TASKS
from ulmed.errors import ConfigError

__all__ = [
    "BayesErrorObjective",
    "FeatureTap",
    "bayes_error",
    "loo_kernel_posterior",
    "patch_features",
    "pixel_features",
]

#: Floor of the median-heuristic bandwidth (feature units).
MIN_BANDWIDTH = 1e-6
#: The tasks :class:`BayesErrorObjective` serves.


# --------------------------------------------------------------------------- validation


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_bandwidth(bandwidth: float | None) -> float | None:
    if bandwidth is None:
        return None
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)) \
            or not math.isfinite(bandwidth) or bandwidth <= 0:
        raise ConfigError(f"bandwidth must be a finite number > 0 or None (median heuristic), got {bandwidth!r}")
    return float(bandwidth)


def _check_generator(generator: object) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ConfigError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def _as_label_map(targets: Tensor, batch: int, spatial: tuple[int, ...], name: str = "targets") -> Tensor:
    """``(B, 1, *S)`` or ``(B, *S)`` integer-valued targets -> ``(B, *S)`` long.

    Float or bool masks are accepted when every value is a non-negative integer (a binary
    ``{0., 1.}`` mask is common); anything else raises.
    """
    if not isinstance(targets, Tensor):
        raise ConfigError(f"{name} must be a tensor, got {type(targets).__name__}")
    d = len(spatial)
    if targets.dim() == d + 2 and targets.shape[1] == 1:
        targets = targets.squeeze(1)
    if tuple(targets.shape) != (batch, *spatial):
        raise ConfigError(f"{name} must have shape (B, 1, *spatial) or (B, *spatial) = {(batch, *spatial)} "
                          f"to match the features, got {tuple(targets.shape)}")
    if targets.is_complex():
        raise ConfigError(f"{name} must hold class indices, got a complex tensor")
    if targets.is_floating_point() and (
            not bool(torch.isfinite(targets).all()) or not torch.equal(targets, targets.round())):
        raise ConfigError(f"{name} must hold integer class indices; got non-integer values")
    targets = targets.long()
    if targets.numel() and int(targets.min()) < 0:
        raise ConfigError(f"{name} must hold class indices >= 0, got {int(targets.min())}")
    return targets


# --------------------------------------------------------------------------- estimator


def _median_bandwidth(sq_dists: Tensor) -> Tensor:
    """Median of the off-diagonal pairwise distances, detached and floored.

    When more than half the pairs coincide (e.g. many identical all-zero background
    patches) the plain median is 0; the median of the non-zero distances is used instead.
    The lower median is taken for an even count.
    """
    n = sq_dists.shape[0]
    iu = torch.triu_indices(n, n, offset=1, device=sq_dists.device)
    dists = sq_dists.detach()[iu[0], iu[1]].sqrt()
    h = dists.median()
    if h <= 0:
        nonzero = dists[dists > 0]
        h = nonzero.median() if nonzero.numel() else h
    return h.clamp_min(MIN_BANDWIDTH)


def loo_kernel_posterior(features: Tensor, labels: Tensor, num_classes: int,
                         bandwidth: float | None = None) -> Tensor:
    """Leave-one-out Gaussian-kernel (Nadaraya-Watson) class posterior.

    ``K_ij = exp(-||f_i - f_j||^2 / (2 h^2))`` with ``K_ii = 0`` and
    ``p_ic = sum_j K_ij [y_j = c] / sum_j K_ij``, computed in float64 as a softmax of the
    log-kernel over ``j != i`` (log-sum-exp), so it is differentiable in ``features``.

    Degenerate cases:
        * A point far from all others (every ``K_ij`` underflows in linear space) still gets
          a finite posterior: log space gives the ``h -> 0`` limit, the label distribution
          of its nearest neighbour(s).
        * If every log-kernel of a row is ``-inf`` (``||f_i - f_j||^2 / (2 h^2)`` overflows
          float64 for every ``j``), that row is the uniform ``1 / num_classes``; it carries
          no gradient.
        * ``N`` identical points, ``n`` per class in two classes: the leave-one-out
          posterior of a point's own class is ``(n - 1) / (2n - 1)``.

    Args:
        features: ``(N, D)`` finite floating-point features, ``N >= 2``.
        labels: ``(N,)`` integer labels in ``[0, num_classes)``.
        num_classes: Number of classes ``K >= 1``.
        bandwidth: Kernel width ``h > 0``; ``None`` takes the median heuristic (median of
            the off-diagonal pairwise distances, or of the non-zero ones when that median is
            0, detached, floored at :data:`MIN_BANDWIDTH`).

    Returns:
        ``(N, K)`` posterior in the dtype of ``features``; rows sum to 1.

    Raises:
        ConfigError: Bad shapes or dtypes, ``N < 2``, labels out of range, non-finite
            features or a bandwidth that is not a positive finite number.
    """
    num_classes = _check_int("num_classes", num_classes, 1)
    bandwidth = _check_bandwidth(bandwidth)
    if not isinstance(features, Tensor) or features.dim() != 2 or not features.is_floating_point():
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ConfigError(f"features must be a floating-point (N, D) tensor, got {shape}")
    n = features.shape[0]
    if n < 2:
        raise ConfigError(f"the leave-one-out posterior needs at least 2 points, got {n}")
    if features.shape[1] < 1:
        raise ConfigError("features must have at least one dimension (D >= 1)")
    if not isinstance(labels, Tensor) or tuple(labels.shape) != (n,) or labels.is_floating_point() \
            or labels.is_complex() or labels.dtype == torch.bool:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ConfigError(f"labels must be an integer ({n},) tensor matching the features, got {shape}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ConfigError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    if not bool(torch.isfinite(features).all()):
        raise ConfigError("features must be finite (got inf or nan)")

    f = features.double()
    # Exact differences (no Gram-matrix cancellation), without materialising (N, N, D).
    sq_dists = torch.cdist(f, f, p=2.0, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    h = _median_bandwidth(sq_dists) if bandwidth is None else torch.tensor(bandwidth, dtype=f.dtype, device=f.device)
    eye = torch.eye(n, dtype=torch.bool, device=f.device)
    log_k = (-sq_dists / (2.0 * h * h)).masked_fill(eye, -math.inf)
    dead = torch.isneginf(log_k).all(1)  # every other point infinitely far in log space
    log_k = torch.where(dead[:, None] & ~eye, torch.zeros_like(log_k), log_k)
    weights = torch.softmax(log_k, dim=1)  # K_ij / sum_j K_ij, via log-sum-exp
    onehot = F.one_hot(labels.to(f.device), num_classes).to(f.dtype)
    posterior = weights @ onehot
    posterior = torch.where(dead[:, None], torch.full_like(posterior, 1.0 / num_classes), posterior)
    return posterior.to(features.dtype)


def bayes_error(features: Tensor, labels: Tensor, num_classes: int, bandwidth: float | None = None) -> Tensor:
    """Plug-in Bayes-error estimate ``mean_i (1 - max_c p_ic)`` of the LOO kernel posterior.

    Differentiable in ``features`` (``max`` contributes a subgradient). Separated classes
    give ~0; two balanced classes of ``n`` identical points each give ``(n - 1) / (2n - 1)``
    (-> 0.5 as ``n`` grows; 0 for ``n = 1`` because leave-one-out leaves only the other class).

    Args:
        features: ``(N, D)`` features, ``N >= 2``.
        labels: ``(N,)`` integer labels in ``[0, num_classes)``.
        num_classes: Number of classes.
        bandwidth: Kernel width, or ``None`` for the median heuristic.

    Returns:
        A scalar tensor in ``[0, 1 - 1/K]``.

    Raises:
        ConfigError: As :func:`loo_kernel_posterior`.
    """
    posterior = loo_kernel_posterior(features, labels, num_classes, bandwidth)
    return (1.0 - posterior.max(dim=1).values).mean()


# --------------------------------------------------------------------------- sampling


def _sample_positions(label_map: Tensor, per_class: int,
                      generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Up to ``per_class`` flat positions of each class present, uniformly, sorted per class.

    Returns:
        Flat indices into ``label_map.reshape(-1)`` and their labels; classes ascending.
    """
    flat = label_map.reshape(-1)
    chosen = []
    for c in torch.unique(flat).tolist():
        idx = (flat == c).nonzero().squeeze(1)
        if idx.numel() > per_class:
            device = generator.device if generator is not None else torch.device("cpu")
            perm = torch.randperm(idx.numel(), generator=generator, device=device)[:per_class]
            idx = idx[perm.to(idx.device)].sort().values
        chosen.append(idx)
    index = torch.cat(chosen)
    return index, flat[index]


def _split_index(index: Tensor, spatial: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Flat ``(b, *spatial)`` indices -> batch index and flat spatial index."""
    size = math.prod(spatial)
    return index // size, index % size


def _check_map(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor) or value.dim() < 3 or not value.is_floating_point():
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ConfigError(f"{name} must be a floating-point (B, C, *spatial) tensor with >= 1 spatial dim, got {shape}")
    if value.shape[0] < 1 or value.shape[1] < 1 or value.numel() == 0:
        raise ConfigError(f"{name} must not be empty, got shape {tuple(value.shape)}")
    return value


def pixel_features(feature_map: Tensor, targets: Tensor, per_class: int,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Sample up to ``per_class`` positions of each class and return their feature vectors.

    Positions of a class are drawn uniformly among all its positions across the batch
    (all of them when there are at most ``per_class``), reproducibly from ``generator``.
    Gradients flow back to ``feature_map``. Works for 2D and 3D (any number of spatial dims).

    Args:
        feature_map: ``(B, F, *spatial)`` features.
        targets: ``(B, 1, *spatial)`` or ``(B, *spatial)`` class indices (integer-valued
            float masks are accepted).
        per_class: Maximum number of positions per class, ``>= 1``.
        generator: Random source of the sampling; ``None`` uses torch's global generator.

    Returns:
        Features ``(M, F)`` and long labels ``(M,)``, classes in ascending order and, within
        a class, positions in ascending flat ``(b, *spatial)`` order.

    Raises:
        ConfigError: Bad shapes, non-integer or negative targets, bad ``per_class``.
    """
    feature_map = _check_map("feature_map", feature_map)
    per_class = _check_int("per_class", per_class, 1)
    generator = _check_generator(generator)
    spatial = tuple(feature_map.shape[2:])
    label_map = _as_label_map(targets, feature_map.shape[0], spatial).to(feature_map.device)
    index, labels = _sample_positions(label_map, per_class, generator)
    b, s = _split_index(index, spatial)
    features = feature_map.flatten(2)[b, :, s]  # (M, F): advanced indices around a slice go first
    return features, labels


def patch_features(images: Tensor, targets: Tensor, per_class: int, patch: int = 5,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Like :func:`pixel_features`, with the flattened input patch around a position as its feature.

    The feature of a position is the ``patch ** d`` neighbourhood of every channel, zero
    padded at the border, flattened channel-major (the layout of ``F.unfold`` in 2D):
    ``C * patch ** d`` values. Only the sampled neighbourhoods are gathered, so a 3D volume
    is never unfolded or padded as a whole. Gradients flow back to ``images``.

    Args:
        images: ``(B, C, *spatial)`` inputs.
        targets: ``(B, 1, *spatial)`` or ``(B, *spatial)`` class indices.
        per_class: Maximum number of positions per class, ``>= 1``.
        patch: Odd patch side, ``>= 1``.
        generator: Random source of the sampling; ``None`` uses torch's global generator.

    Returns:
        Features ``(M, C * patch ** d)`` and long labels ``(M,)``, ordered as in
        :func:`pixel_features` (the same positions for the same generator state).

    Raises:
        ConfigError: Bad shapes, targets, ``per_class`` or an even/non-positive ``patch``.
    """
    images = _check_map("images", images)
    per_class = _check_int("per_class", per_class, 1)
    patch = _check_int("patch", patch, 1)
    if patch % 2 == 0:
        raise ConfigError(f"patch must be odd so that the patch is centred on its pixel, got {patch}")
    generator = _check_generator(generator)
    batch, channels = images.shape[:2]
    spatial = tuple(images.shape[2:])
    label_map = _as_label_map(targets, batch, spatial).to(images.device)
    index, labels = _sample_positions(label_map, per_class, generator)
    b, s = _split_index(index, spatial)

    device = images.device
    sizes = torch.tensor(spatial, device=device)
    strides = torch.tensor([math.prod(spatial[i + 1:]) for i in range(len(spatial))], device=device)
    coords = (s[:, None] // strides) % sizes  # (M, d)
    r = patch // 2
    axis = torch.arange(-r, r + 1, device=device)
    offsets = torch.stack(torch.meshgrid(*[axis] * len(spatial), indexing="ij"), dim=-1).reshape(-1, len(spatial))
    neighbours = coords[:, None, :] + offsets[None]  # (M, P, d)
    inside = ((neighbours >= 0) & (neighbours < sizes)).all(-1)  # (M, P)
    neighbours = torch.minimum(neighbours.clamp_min(0), sizes - 1)
    flat = (neighbours * strides).sum(-1)  # (M, P)
    values = images.flatten(2)[b[:, None], :, flat]  # (M, P, C)
    values = values * inside[..., None].to(values.dtype)
    features = values.permute(0, 2, 1).reshape(index.numel(), channels * offsets.shape[0])
    return features, labels


# --------------------------------------------------------------------------- feature tap


class FeatureTap:
    """Capture the output of a submodule during a forward pass (a forward hook).

    Use as a context manager, ``with FeatureTap(model.model[1]) as tap: model(x); f = tap.output``,
    or call :meth:`attach` / :meth:`remove`. The captured output is not detached, so a loss
    on it back-propagates through the network to the input.

    Args:
        module: The submodule whose output to capture.

    Raises:
        ConfigError: ``module`` is not an ``nn.Module``.
    """

    def __init__(self, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise ConfigError(f"FeatureTap needs an nn.Module, got {type(module).__name__}")
        self.module = module
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._output: object = None

    def _hook(self, module: nn.Module, args: object, output: object) -> None:
        self._output = output

    @property
    def attached(self) -> bool:
        """Whether the hook is currently registered."""
        return self._handle is not None

    def attach(self) -> Self:
        """Register the hook (idempotent) and forget any earlier output."""
        if self._handle is None:
            self._handle = self.module.register_forward_hook(self._hook)
        self._output = None
        return self

    def remove(self) -> None:
        """Remove the hook (idempotent); the last output stays readable."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def output(self) -> Tensor:
        """The module's last output.

        Raises:
            ConfigError: Nothing captured yet (the module did not run) or not a tensor.
        """
        if self._output is None:
            raise ConfigError("FeatureTap has captured nothing: the tapped module did not run in the forward pass")
        if not isinstance(self._output, Tensor):
            raise ConfigError(f"the tapped module returned {type(self._output).__name__}, not a tensor")
        return self._output

    def __enter__(self) -> Self:
        return self.attach()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()


# --------------------------------------------------------------------------- objective


class BayesErrorObjective:
    """``(model, x_adv, y) -> -bayes_error``: a loss to minimise that raises the Bayes error.

    Classification: the feature of an image is the tapped output of ``layer`` (global
    average pooled over spatial dims, if any), or the model's logits when ``layer`` is None;
    all images of the batch enter the estimate. Segmentation: :func:`pixel_features` of the
    tapped map (targets are nearest-resized when its spatial size differs from ``y``), or
    :func:`patch_features` of ``x_adv`` when ``layer`` is None (the model is then not run).
    Each call draws fresh positions from a generator seeded once with ``seed``, so a
    sequence of calls is reproducible.

    Args:
        num_classes: Number of classes ``>= 2`` (2 for a binary mask).
        task: ``"segmentation"`` or ``"classification"``.
        layer: Submodule of the model whose output gives the features, or None.
        per_class: Positions sampled per class (segmentation), ``>= 1``.
        patch: Odd patch side for input-patch features, ``>= 1``.
        bandwidth: Kernel width, or ``None`` for the median heuristic.
        seed: Seed of the position sampler.

    Raises:
        ConfigError: Any argument invalid.
    """

    def __init__(self, num_classes: int, task: str = "segmentation", layer: nn.Module | None = None,
                 per_class: int = 64, patch: int = 5, bandwidth: float | None = None, seed: int = 0) -> None:
        self.num_classes = _check_int("num_classes", num_classes, 2)
        if task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        self.task = task
        if layer is not None and not isinstance(layer, nn.Module):
            raise ConfigError(f"layer must be an nn.Module or None, got {type(layer).__name__}")
        self.layer = layer
        self.per_class = _check_int("per_class", per_class, 1)
        self.patch = _check_int("patch", patch, 1)
        if self.patch % 2 == 0:
            raise ConfigError(f"patch must be odd, got {patch}")
        self.bandwidth = _check_bandwidth(bandwidth)
        self.seed = _check_int("seed", seed, 0)
        self._generator = torch.Generator().manual_seed(self.seed)

    def _forward(self, model: nn.Module, x: Tensor) -> Tensor:
        if self.layer is None:
            out = model(x)
            if not isinstance(out, Tensor):
                raise ConfigError(f"the model returned {type(out).__name__}, not a tensor; pass layer=")
            return out
        with FeatureTap(self.layer) as tap:
            model(x)
        return tap.output

    def __call__(self, model: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
        """Minus the Bayes-error estimate of the batch (a scalar to minimise)."""
        if not isinstance(x_adv, Tensor) or x_adv.dim() < 2:
            raise ConfigError("x_adv must be a (B, C, ...) tensor")
        if self.task == "classification":
            return -self._classification(model, x_adv, y)
        return -self._segmentation(model, x_adv, y)

    def _classification(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        batch = x.shape[0]
        if not isinstance(y, Tensor) or y.numel() != batch or y.dim() > 2:
            raise ConfigError(f"classification targets must be (B,) or (B, 1) class indices with B = {batch}")
        labels = _as_label_map(y.reshape(batch), batch, ())
        feats = self._forward(model, x)
        if feats.shape[0] != batch:
            raise ConfigError(f"features have batch {feats.shape[0]}, expected {batch}")
        feats = feats.flatten(2).mean(-1) if feats.dim() > 2 else feats.reshape(batch, -1)
        return bayes_error(feats, labels.to(feats.device), self.num_classes, self.bandwidth)

    def _segmentation(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if self.layer is None:
            feats, labels = patch_features(x, y, self.per_class, self.patch, self._generator)
        else:
            fmap = _check_map("the tapped feature map", self._forward(model, x))
            label_map = _as_label_map(y, x.shape[0], tuple(x.shape[2:]), "y")
            if tuple(fmap.shape[2:]) != tuple(label_map.shape[1:]):
                if fmap.dim() != label_map.dim() + 1:
                    raise ConfigError(f"the tapped map {tuple(fmap.shape)} and the targets {tuple(y.shape)} "
                                      "differ in their number of spatial dims")
                label_map = F.interpolate(label_map[:, None].float(), size=fmap.shape[2:], mode="nearest")[:, 0]
            feats, labels = pixel_features(fmap, label_map, self.per_class, self._generator)
        return bayes_error(feats, labels, self.num_classes, self.bandwidth)
