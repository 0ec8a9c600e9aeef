"""Vision-to-language adapters (LLaVA ``mm_projector`` layouts)."""

from __future__ import annotations

from torch import nn

from workers.inference.manifest import ProjectorSpec


def build_projector(spec: ProjectorSpec) -> nn.Module:
    """Instantiate the projector described by ``spec``.

    ``mlp2x_gelu`` is ``Sequential(Linear, GELU, Linear)`` (keys ``0.*`` and ``2.*``, as
    LLaVA's ``mm_projector``); ``linear`` is a single ``Linear`` (keys ``weight``, ``bias``).

    Parameters
    ----------
    spec
        Projector description.

    Returns
    -------
    torch.nn.Module
        A module mapping (..., in_dim) to (..., out_dim).
    """
    if spec.kind == "mlp2x_gelu":
        return nn.Sequential(
            nn.Linear(spec.in_dim, spec.out_dim),
            nn.GELU(),
            nn.Linear(spec.out_dim, spec.out_dim),
        )
    if spec.kind == "linear":
        return nn.Linear(spec.in_dim, spec.out_dim)
    raise ValueError(f"unknown projector kind {spec.kind!r}")


__all__ = ["build_projector"]
