"""solidrl.theory: sympy derivations and the numeric predictors compiled from them (pure math).

Imports sympy, numpy and torch only; never trainer/ or probes/. Nothing is imported here, so that
`solidrl.theory.registry` (which trainer/ and probes/ use) stays free of sympy's import time.

One name per idea: predictor `X` (theory.predictors.PREDICTORS) <- `derive_X` <- notebook section "## X"
<- tests `test_X_*` (tests/test_theory_predictors.py enforces it).

  module       derivations (predictor where registered)                           notebook
  entropy      softmax_expansion, tabular_sgd*, tabular_npg*, tabular_adam*,     notebooks/entropy_dynamics.ipynb
               cov_entropy*
  kernel       jvp*, kernel_crosstalk*  (+ jvp_logit_change, linearized_stats)    notebooks/entropy_dynamics.ipynb
  advantages   grpo_gradnorm_ratio*, rloo_unbiased, aggregation_weights           notebooks/advantage_estimators.ipynb
  kl           kl_estimators, kl_gradients                                        notebooks/kl_estimators.ipynb
  offpolicy    ratio_decomposition, clip_frac*, tis*, icepop*                     notebooks/off_policy.ipynb
  (* = a registered predictor of the same name)

derivation.py holds the Derivation value every `derive_*` returns and the STAT symbols (one per
batch-statistics key of docs/contracts.md); registry.py the one registry helper.
"""
