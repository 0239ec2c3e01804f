"""Shields: run a SafeFQL model as a policy, or filter any other agent's actions, as a Gymnasium wrapper."""

from safefql.shields.evaluate import BoatOracleModel, EvalReport, evaluate
from safefql.shields.pretrained import pretrained_path
from safefql.shields.wrapper import SafeFQLShield, SafeFQLVectorShield

__all__ = [
    "BoatOracleModel",
    "EvalReport",
    "SafeFQLShield",
    "SafeFQLVectorShield",
    "evaluate",
    "pretrained_path",
]
