"""solidrl.theory: sympy derivations and the numeric predictors compiled from them (pure math).

Imports sympy, numpy and torch only; never trainer/ or probes/.
"""
