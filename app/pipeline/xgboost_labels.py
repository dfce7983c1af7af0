"""XGBoost's classifier for any class labels.

XGBClassifier fits only labels 0 .. n-1 and answers in them; the pipelines here are fitted on the
labels themselves (strings, as prepare reads them) and serving answers with `classes_`. This class
encodes them for XGBoost and answers in the originals. In a module of its own, so that importing
the candidate list does not import xgboost (about a second), and so that pickles name it here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from xgboost import XGBClassifier


class LabelledXGBClassifier(XGBClassifier):
    """XGBClassifier fitted on the labels' positions in `classes_` (sorted, as scikit-learn's are)."""

    def fit(self, X: Any, y: Any, **kwargs: Any) -> LabelledXGBClassifier:
        labels, codes = np.unique(np.asarray(y), return_inverse=True)
        # XGBoost's fit checks the codes against classes_, which must then be its own 0 .. n-1.
        self.labels_: np.ndarray | None = None
        super().fit(X, codes, **kwargs)
        self.labels_ = labels
        return self

    @property
    def classes_(self) -> np.ndarray:
        labels = getattr(self, "labels_", None)
        return np.arange(self.n_classes_) if labels is None else labels

    def predict(self, X: Any, **kwargs: Any) -> np.ndarray:
        return self.classes_[np.asarray(super().predict(X, **kwargs), dtype=np.intp)]
