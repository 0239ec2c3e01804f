"""Small Equinox building blocks shared by every agent: an MLP and ensembles of them.

Modules take *unbatched* inputs (Equinox convention); batch with ``jax.vmap``. An ensemble is one
``MLP`` whose array leaves carry a leading member axis, built with ``eqx.filter_vmap`` over init keys,
so a whole ensemble is evaluated by one vmapped call and exports to NumPy as stacked arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
    "silu": jax.nn.silu,
}


class MLP(eqx.Module):
    """Fully connected network ``in_size -> hidden... -> out_size`` with an optional final squeeze.

    ``out_size=1`` with ``squeeze=True`` returns a scalar, which is what critics want.
    The activation is stored by name so that checkpoints and NumPy exports can rebuild it.
    ``layer_norm=True`` adds a LayerNorm after each hidden activation (``linear -> act -> norm``, as FQL's
    value networks): ``norms[i]`` follows ``layers[i]``.
    """

    layers: tuple[eqx.nn.Linear, ...]
    norms: tuple[eqx.nn.LayerNorm, ...]
    activation: str = eqx.field(static=True)
    squeeze: bool = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        hidden: Sequence[int],
        *,
        key: PRNGKeyArray,
        activation: str = "relu",
        squeeze: bool = False,
        layer_norm: bool = False,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if squeeze and out_size != 1:
            raise ValueError(f"squeeze=True needs out_size=1, got out_size={out_size}")
        sizes = [in_size, *hidden, out_size]
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(
            eqx.nn.Linear(n_in, n_out, key=k)
            for n_in, n_out, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
        )
        self.norms = tuple(eqx.nn.LayerNorm(n) for n in hidden) if layer_norm else ()
        self.activation = activation
        self.squeeze = squeeze

    def __call__(self, x: Float[Array, " in_size"]) -> Float[Array, "..."]:
        act = ACTIVATIONS[self.activation]
        for i, layer in enumerate(self.layers[:-1]):
            x = act(layer(x))
            if self.norms:
                x = self.norms[i](x)
        x = self.layers[-1](x)
        return x[0] if self.squeeze else x


def make_ensemble(key: PRNGKeyArray, num: int, **mlp_kwargs) -> MLP:
    """``num`` independently initialised MLPs stacked along a leading axis of every array leaf."""
    return eqx.filter_vmap(lambda k: MLP(key=k, **mlp_kwargs))(jax.random.split(key, num))


def ensemble_apply(ensemble: MLP, x: Float[Array, "..."]) -> Float[Array, "num ..."]:
    """Evaluate every member of an ensemble on the same unbatched input; result has a leading member axis."""
    return eqx.filter_vmap(lambda member: member(x))(ensemble)


def ema_update(target: eqx.Module, online: eqx.Module, rate: float) -> eqx.Module:
    """Polyak average ``target <- (1 - rate) * target + rate * online`` over the array leaves."""
    t_arrays, t_static = eqx.partition(target, eqx.is_array)
    o_arrays = eqx.filter(online, eqx.is_array)
    mixed = jax.tree.map(lambda t, o: (1.0 - rate) * t + rate * jax.lax.stop_gradient(o), t_arrays, o_arrays)
    return eqx.combine(mixed, t_static)
