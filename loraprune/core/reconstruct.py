"""Reconstruction of a projection whose input units are removed: what its kept inputs stand in for.

When units are removed, the input channels ``r`` of ``o_proj`` / ``down_proj`` they fed are gone and the
layer's output loses ``W[:, r] @ x_r``. Each reconstruction is a map ``x ↦ x̃`` of the projection's input
that uses only the kept channels ``k`` (an :class:`InputMap`); the layer then computes ``W @ x̃``, which is
merged into the weights once (:meth:`InputMap.merge`: new kept columns, and a bias):

* ``bias`` (FLAP, An et al. 2024): each removed channel is replaced by its calibration mean,
  ``x̃_r = mean_r``; merged, ``b += W[:, r] @ mean_r``;
* ``least_squares`` (the kept columns refitted to the dense output, as SlimGPT / ZipLM / OBS do): each
  removed channel is predicted from the kept ones by ridge regression on the calibration Gram
  ``G = Σ_t x_t x_tᵀ``, ``x̃_r = G_rk (G_kk + δI)⁻¹ x_k``; merged, ``W'_k = W_k + W_r G_rk (G_kk + δI)⁻¹``,
  the minimiser of ``‖W X − W'_k X_k‖² + δ‖W'_k − W_k‖²`` over the calibration tokens (with ``δ = 0``
  the normal equations exactly; ``δ = damp · mean(diag G)`` as SparseGPT damps its Hessian);
* ``scales`` (Kwon et al. 2022's mask tuning): one scale per kept unit, ``x̃_u = s_u x_u``, the
  least-squares fit of ``Σ_u s_u W_u x_u`` to the dense output ``W x``: normal equations
  ``A s = c`` with ``A_uv = Σ_{i∈u, j∈v} (WᵀW ⊙ G)_ij`` and ``c_u = Σ_{i∈u, all j} (WᵀW ⊙ G)_ij``, damped
  toward ``s = 1`` (``(A + δI) s = c + δ``); a layer whose scales leave [−10, 10] keeps ``s = 1``, as
  the reference code stops rescaling there.

Memory: ``least_squares`` and ``scales`` need the Gram of every masked projection's input,
``in_features²`` numbers per projection (float32, accumulated over the calibration tokens; solved in
float64): for LLaMA-7B 11008² · 4 B ≈ 0.45 GiB per ``down_proj`` and 4096² · 4 B = 64 MiB per ``o_proj``,
about 17 GiB for 32 layers (0.3 GiB on SmolLM2-135M), on the model's device until the masks are final;
solving takes a transient float64 copy of one projection's (``scales``: also ``WᵀW``). Then the fixed
maps stay for the fine-tuning hooks: ``least_squares`` a |kept| × |removed| matrix per projection (LLaMA-7B
at 50%: 5504² · 4 B ≈ 0.11 GiB per ``down_proj``), ``scales`` and ``bias`` one vector. ``bias`` needs one
mean per channel. Pure tensor functions: no I/O, no model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RECONSTRUCTIONS = ("none", "bias", "least_squares", "scales")
NEEDS_GRAM = ("least_squares", "scales")
SCALE_LIMIT = 10.0  # Kwon et al.'s reference leaves a layer unscaled past |s| > 10


@dataclass
class InputStats:
    """Calibration statistics of one projection's input: tokens seen, Σ x (float64), and Σ x xᵀ (float32,
    ``None`` unless a Gram is needed)."""

    count: int
    total: torch.Tensor
    gram: torch.Tensor | None = None

    @classmethod
    def empty(cls, width: int, gram: bool, device: torch.device | str = "cpu") -> InputStats:
        total = torch.zeros(width, dtype=torch.float64, device=device)
        g = torch.zeros(width, width, dtype=torch.float32, device=device) if gram else None
        return cls(0, total, g)

    def add(self, x: torch.Tensor) -> None:
        """Fold in tokens ``x`` (tokens × channels)."""
        x = x.to(self.total.device)
        self.count += x.shape[0]
        self.total += x.double().sum(0)
        if self.gram is not None:
            xf = x.float()
            self.gram.addmm_(xf.t(), xf)

    @property
    def mean(self) -> torch.Tensor:
        return (self.total / max(self.count, 1)).float()


@dataclass
class InputMap:
    """``x ↦ x̃`` on one projection's input (width ``n``), given the kept channels ``kept`` and removed
    channels ``removed`` (index tensors): ``x̃ = x ⊙ scale + scatter_r(x_k @ predict) + shift``. ``scale``
    (n; removed channels 0), ``shift`` (n; nonzero on removed channels only) and ``predict`` (|k| × |r|)
    are optional (``None``: identity, zero, zero). The removed channels of ``x`` are assumed zero (the
    unit masks ran first)."""

    kept: torch.Tensor
    removed: torch.Tensor
    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    predict: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> InputMap:
        def move(t):
            return None if t is None else t.to(device)

        return InputMap(
            self.kept.to(device),
            self.removed.to(device),
            move(self.scale),
            move(self.shift),
            move(self.predict),
        )

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x̃`` for an input ``x`` (… × n), in ``x``'s dtype."""
        y = x
        if self.scale is not None:
            y = y * self.scale.to(x.dtype)
        if self.predict is not None:
            guess = x.index_select(-1, self.kept) @ self.predict.to(x.dtype)
            y = y.index_add(-1, self.removed, guess)
        if self.shift is not None:
            y = y + self.shift.to(x.dtype)
        return y

    def merge(
        self, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W', b')`` with ``W' x + b' = W x̃ + b`` for every ``x`` zero on the removed channels (float32;
        the removed columns of ``W'`` are zero). ``b'`` is ``bias`` unchanged without a shift."""
        w = weight.float()
        out = torch.zeros_like(w)
        kept_cols = w[:, self.kept]
        if self.scale is not None:
            kept_cols = kept_cols * self.scale.float()[self.kept]
        if self.predict is not None:
            kept_cols = kept_cols + w[:, self.removed] @ self.predict.float().t()
        out[:, self.kept] = kept_cols
        if self.shift is None:
            return out, bias
        extra = w @ self.shift.float()
        return out, extra if bias is None else bias.float() + extra

    def state(self) -> dict[str, torch.Tensor]:
        """As named tensors (for checkpoints and data-parallel decisions)."""
        out = {"kept": self.kept.cpu(), "removed": self.removed.cpu()}
        for name in ("scale", "shift", "predict"):
            t = getattr(self, name)
            if t is not None:
                out[name] = t.detach().float().cpu()
        return out

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> InputMap:
        return cls(
            state["kept"].long(),
            state["removed"].long(),
            *(state.get(k) for k in ("scale", "shift", "predict")),
        )


def _split(removed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept and removed channel indices of a boolean ``removed`` mask."""
    return (~removed).nonzero().flatten(), removed.nonzero().flatten()


def damping(gram: torch.Tensor, damp: float) -> float:
    """``damp · mean(diag G)`` (SparseGPT's ``percdamp``)."""
    return float(damp * gram.diagonal().double().mean())


def bias_map(mean: torch.Tensor, removed: torch.Tensor) -> InputMap:
    """Removed channels replaced by their calibration ``mean`` (FLAP's bias compensation)."""
    kept, gone = _split(removed.to(mean.device))
    shift = torch.zeros_like(mean, dtype=torch.float32)
    shift[gone] = mean.float()[gone]
    return InputMap(kept, gone, shift=shift)


def least_squares_map(gram: torch.Tensor, removed: torch.Tensor, damp: float = 0.01) -> InputMap:
    """Removed channels predicted from the kept ones by ridge regression on ``gram`` (see the module doc):
    ``predict = (G_kk + δI)⁻¹ G_kr`` with ``δ = damp · mean(diag G)``; kept channels no calibration token
    reached (``G_jj = 0``) predict nothing."""
    kept, gone = _split(removed.to(gram.device))
    g = gram.double()
    h = g[kept][:, kept].clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(damping(g, damp))
    rhs = g[kept][:, gone]
    rhs[dead] = 0.0
    predict = torch.linalg.solve(h, rhs)
    return InputMap(kept, gone, predict=predict.float())


def unit_scales(
    gram: torch.Tensor,
    weight: torch.Tensor,
    removed: torch.Tensor,
    unit_of_channel: torch.Tensor,
    damp: float,
) -> torch.Tensor | None:
    """Kwon et al.'s mask tuning for one projection: the scale of every kept unit (by unit index order of
    the kept units), or ``None`` when a scale leaves ``[-SCALE_LIMIT, SCALE_LIMIT]`` or the system is
    singular. ``unit_of_channel``: the unit of each input channel (``-1``: none; such channels keep
    scale 1 and count in the target)."""
    device = gram.device
    w = weight.to(device).double()
    c = (w.t() @ w) * gram.double()  # (WᵀW ⊙ G)_ij = Σ_t (W_:,i x_ti)·(W_:,j x_tj)
    owner = unit_of_channel.to(device)
    kept_units = torch.unique(owner[(~removed.to(device)) & (owner >= 0)])
    if kept_units.numel() == 0:
        return None
    position = torch.full((int(owner.max()) + 1,), -1, dtype=torch.long, device=device)
    position[kept_units] = torch.arange(kept_units.numel(), device=device)
    scaled = (~removed.to(device)) & (owner >= 0)
    onehot = torch.zeros(owner.numel(), kept_units.numel(), dtype=torch.float64, device=device)
    onehot[scaled.nonzero().flatten(), position[owner[scaled]]] = 1.0
    fixed = (~removed.to(device)) & (owner < 0)  # kept channels of no unit: scale 1, part of the fit's base
    a = onehot.t() @ c @ onehot
    target = onehot.t() @ c.sum(1) - onehot.t() @ c[:, fixed].sum(1)
    delta = float(damp * a.diagonal().mean())
    a.diagonal().add_(delta)
    target += delta
    try:
        s = torch.linalg.solve(a, target)
    except RuntimeError:  # singular (torch.linalg.LinAlgError is a RuntimeError)
        return None
    if not torch.isfinite(s).all() or s.abs().max() > SCALE_LIMIT:
        return None
    return s


def scales_map(
    gram: torch.Tensor,
    weight: torch.Tensor,
    removed: torch.Tensor,
    unit_of_channel: torch.Tensor,
    damp: float = 0.01,
) -> InputMap:
    """Kwon et al.'s mask tuning as an :class:`InputMap`: each kept unit's channels times its scale
    (:func:`unit_scales`; all ones where it gives up)."""
    kept, gone = _split(removed.to(gram.device))
    scale = torch.ones(removed.numel(), dtype=torch.float32, device=gram.device)
    scale[gone] = 0.0
    s = unit_scales(gram, weight, removed, unit_of_channel, damp)
    if s is not None:
        owner = unit_of_channel.to(gram.device)
        kept_units = torch.unique(owner[(~removed.to(gram.device)) & (owner >= 0)])
        per_unit = torch.ones(int(owner.max()) + 1, dtype=torch.float32, device=gram.device)
        per_unit[kept_units] = s.float()
        owned = owner >= 0
        scale[owned] = torch.where(removed.to(gram.device)[owned], 0.0, per_unit[owner[owned]])
    return InputMap(kept, gone, scale=scale)


def input_map(
    mode: str,
    stats: InputStats,
    removed: torch.Tensor,
    weight: torch.Tensor | None = None,
    unit_of_channel: torch.Tensor | None = None,
    damp: float = 0.01,
) -> InputMap | None:
    """The map of reconstruction ``mode`` for one projection whose input channels ``removed`` (bool) go;
    ``None`` for ``none`` or when nothing is removed (and, for ``scales``, nothing is kept to scale)."""
    if mode == "none" or not bool(removed.any()):
        return None
    if mode == "bias":
        return bias_map(stats.mean, removed)
    if stats.gram is None:
        raise ValueError(f"reconstruct={mode} needs the Gram of the calibration inputs")
    if mode == "least_squares":
        return least_squares_map(stats.gram, removed, damp)
    if mode == "scales":
        if weight is None or unit_of_channel is None:
            raise ValueError("reconstruct=scales needs the projection's weight and the units of its channels")
        return scales_map(stats.gram, weight, removed, unit_of_channel, damp)
    raise ValueError(f"unknown reconstruct {mode!r}; expected one of {', '.join(RECONSTRUCTIONS)}")
