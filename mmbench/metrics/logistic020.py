"""The logistic regression of MoPoE's pinned scikit-learn 0.20.0 (`MoPoE environment.yml`; `LogisticRegression(
solver='lbfgs', multi_class='auto')` in `eval_metrics/representation.py train_clf_lr`), fitted as 0.20 fits it.

scikit-learn >= 1.4 minimises the mean log-loss and stops lbfgs on its own terms (scikit-learn PR #26721), so no
setting of today's `LogisticRegression` stops where 0.20 did: a 1e-4 gradient on the mean loss stops n times sooner,
and 1e-4 / n does not stop on 0.20's relative-reduction test (scipy's default `factr` 1e7 there, 64 ε today): on
512-d PolyMNIST MoPoE and MMVAE models it ran 19-20 of 31 fits to the 1,000-iteration cap where this class stopped
within 814 (docs/provenance.md). This class minimises 0.20's objective with 0.20's call: the *summed*
log-loss plus ½‖w‖² / C (intercepts unpenalised), multinomial for more than two classes and one logistic for two,
float64 features, `scipy.optimize.fmin_l_bfgs_b(pgtol=tol, maxiter=max_iter)` from zeros with its defaults.
"""
from __future__ import annotations

import numpy as np


def log_sum_exp_rows(a: np.ndarray) -> np.ndarray:
    """log Σ_j exp(a_ij) per row (a column), as the scipy of 0.20's time computed `logsumexp` (the row's largest value
    taken out, log of the sum, the largest added back). Today's `scipy.special.logsumexp` spends ~0.4 ms of array-API
    dispatch per call here, about as long as the rest of a fit's iteration, and sums with log1p since scipy 1.15."""
    top = a.max(axis=1, keepdims=True)
    return np.log(np.exp(a - top).sum(axis=1, keepdims=True)) + top


class LogisticRegression020:
    """fit / predict / predict_proba / decision_function with coef_, intercept_, classes_, n_iter_, max_iter. With
    `standardize` (eval.lr_standardize) it first standardises the features as sklearn's StandardScaler (the training
    rows' mean and population std, a constant feature's std taken as 1) and reads test rows the same way."""

    def __init__(self, max_iter: int = 100, tol: float = 1e-4, C: float = 1.0, standardize: bool = False):
        self.max_iter, self.tol, self.C, self.standardize = max_iter, tol, C, standardize

    def _features(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        return (X - self.mean_) / self.scale_ if self.standardize else X

    def fit(self, X: np.ndarray, y: np.ndarray) -> "LogisticRegression020":
        # (imported here: scipy.optimize costs every mmbench process start-up time, most of which never fit one)
        from scipy import optimize
        from scipy.special import expit, log_expit

        X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
        if self.standardize:
            self.mean_, self.scale_ = X.mean(0), X.std(0)
            self.scale_[self.scale_ == 0] = 1.0
        X = self._features(X)
        self.classes_ = np.unique(y)
        k = len(self.classes_)
        if k < 2:
            raise ValueError(f"a logistic regression needs two classes in y, got {self.classes_.tolist()}")
        n, d = X.shape
        xb = np.hstack([X, np.ones((n, 1))])
        alpha = 1.0 / self.C
        if k == 2:  # 0.20's _logistic_loss_and_grad: labels ±1, one weight vector
            s = np.where(y == self.classes_[1], 1.0, -1.0)

            def loss_grad(w):
                yz = s * (xb @ w)
                grad = xb.T @ ((expit(yz) - 1.0) * s)
                grad[:-1] += alpha * w[:-1]
                return -log_expit(yz).sum() + 0.5 * alpha * (w[:-1] @ w[:-1]), grad
            w0 = np.zeros(d + 1)
        else:  # 0.20's _multinomial_loss_grad: one row of weights per class
            onehot = (y[:, None] == self.classes_[None, :]).astype(np.float64)

            def loss_grad(w):
                w = w.reshape(k, d + 1)
                logits = xb @ w.T
                logp = logits - log_sum_exp_rows(logits)
                grad = (np.exp(logp) - onehot).T @ xb
                grad[:, :-1] += alpha * w[:, :-1]
                return -(onehot * logp).sum() + 0.5 * alpha * (w[:, :-1] ** 2).sum(), grad.ravel()
            w0 = np.zeros(k * (d + 1))
        w, _, info = optimize.fmin_l_bfgs_b(loss_grad, w0, pgtol=self.tol, maxiter=self.max_iter)
        w = w.reshape(-1, d + 1)
        self.coef_, self.intercept_ = w[:, :-1], w[:, -1]
        self.n_iter_ = np.array([info["nit"]])
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        scores = self._features(X) @ self.coef_.T + self.intercept_
        return scores[:, 0] if len(self.classes_) == 2 else scores

    def predict(self, X: np.ndarray) -> np.ndarray:
        scores = self.decision_function(X)
        return self.classes_[(scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(1)]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        from scipy.special import expit, softmax

        scores = self.decision_function(X)
        if scores.ndim == 1:
            p = expit(scores)
            return np.stack([1.0 - p, p], 1)
        return softmax(scores, axis=1)
