"""Activation Clustering (Chen et al., 2018) as BackdoorBench's ``defense/ac.py`` / ART's
``ActivationDefence`` analyse it.

The model's penultimate activations of its (poisoned) training data are split by label,
reduced to ``dims`` (10) dimensions (``reduce``: PCA as BackdoorBench, or ICA as the paper),
and clustered by 2-means. With ``criterion: silhouette`` (ART's ``analyze_by_silhouette_score``)
a class is flagged when its clusters are well separated (silhouette ≥ ``silhouette_threshold``,
0.1) and one of them holds less than ``size_threshold`` (0.35) of the class; with
``relative_size`` the size alone decides. The model is flagged if any class is. Score: the
largest silhouette among classes with a cluster under the size threshold (threshold: the
silhouette threshold; with ``relative_size`` the score is 1 − 2·(smallest relative size)).
"""

from __future__ import annotations

import numpy as np

from qcbench.defenses.base import init_params
from qcbench.detection.base import DetectionInputs, Detector, Verdict, penultimate, register_detector


def cluster_class(feats: np.ndarray, dims: int, reduce: str, seed: int) -> tuple[np.ndarray, float, np.ndarray]:
    """2-means of one class's activations after reduction: (labels, silhouette, relative sizes)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA, FastICA
    from sklearn.metrics import silhouette_score

    k = min(dims, feats.shape[1], len(feats) - 1)
    if reduce == "ica":
        red = FastICA(n_components=k, random_state=seed, max_iter=500).fit_transform(feats)
    else:
        red = PCA(n_components=k, random_state=seed).fit_transform(feats)
    labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(red)
    sizes = np.bincount(labels, minlength=2) / len(labels)
    sil = float(silhouette_score(red, labels)) if sizes.min() > 0 else 0.0
    return labels, sil, sizes


@register_detector("activation_clustering")
class ActivationClustering(Detector):
    def __init__(
        self,
        inspect_images: int = 5000,
        dims: int = 10,
        reduce: str = "pca",
        criterion: str = "silhouette",
        size_threshold: float = 0.35,
        silhouette_threshold: float = 0.1,
    ) -> None:
        if reduce not in ("pca", "ica"):
            raise ValueError(f"activation_clustering reduce {reduce!r} not in ('pca', 'ica')")
        if criterion not in ("silhouette", "relative_size"):
            raise ValueError(f"activation_clustering criterion {criterion!r} not in ('silhouette', 'relative_size')")
        super().__init__(**init_params(locals()))

    def detect(self, model, inputs: DetectionInputs) -> Verdict:
        p = self.params
        x, y, poisoned = inputs.inspection_set(p["inspect_images"])
        feats = penultimate(model, x).numpy()
        y, poisoned = y.numpy(), poisoned.numpy()
        per_class, flagged, removed = {}, [], np.zeros(len(y), dtype=bool)
        score = 0.0 if p["criterion"] == "silhouette" else -1.0
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            if len(idx) < 3:
                continue
            labels, sil, sizes = cluster_class(feats[idx], p["dims"], p["reduce"], inputs.seed)
            small = int(np.argmin(sizes))
            is_small = sizes[small] < p["size_threshold"]
            if p["criterion"] == "silhouette":
                hit = bool(is_small and sil >= p["silhouette_threshold"])
                score = max(score, sil) if is_small else score
            else:
                hit = bool(is_small)
                score = max(score, 1 - 2 * float(sizes[small]))
            if hit:
                flagged.append(int(c))
                removed[idx[labels == small]] = True
            per_class[int(c)] = {"silhouette": round(sil, 4), "small_share": round(float(sizes[small]), 4)}
        thr = p["silhouette_threshold"] if p["criterion"] == "silhouette" else 1 - 2 * p["size_threshold"]
        detail = {
            "per_class": per_class,
            "flagged_classes": flagged,
            "target_flagged": inputs.target in flagged,
            "poisoned_inspected": int(poisoned.sum()),
            "poisoned_removed": int((removed & poisoned).sum()),
            "clean_removed": int((removed & ~poisoned).sum()),
        }
        return Verdict(bool(flagged), float(score), float(thr), detail)
