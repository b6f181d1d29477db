"""Classic baselines users compare against: k-NN and a linear SVM (scikit-learn) on raw pixels,
on HOG descriptors and on the CNN's embeddings. Fitted on train+val, scored on test."""

from __future__ import annotations

import logging
import warnings

import cv2
import numpy as np
from skimage.feature import hog
from sklearn.exceptions import ConvergenceWarning
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

log = logging.getLogger(__name__)

PIXEL_SIZE = 32  # raw-pixel and HOG features use images no larger than this
KNN_K = 5  # as in OpenCV's digits tutorial
MAX_TRAIN = 20_000


def feature_size(height: int, width: int) -> tuple[int, int]:
    scale = min(1.0, PIXEL_SIZE / max(height, width))
    return max(8, round(height * scale)), max(8, round(width * scale))


def pixel_features(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, h*w*3) float32 in [0, 1], shrunk to at most 32 px (area)."""
    h, w = feature_size(images.shape[1], images.shape[2])
    out = [cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) for img in images]
    return np.stack(out).reshape(len(images), -1).astype(np.float32) / 255.0


def hog_features(images: np.ndarray) -> np.ndarray:
    """HOG (9 orientations, 4x4 cells, 2x2 blocks) of the grayscale image at <= 32 px."""
    h, w = feature_size(images.shape[1], images.shape[2])
    cell = (max(2, h // 4), max(2, w // 4))
    feats = []
    for img in images:
        gray = cv2.cvtColor(
            cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY
        )
        feats.append(hog(gray, orientations=9, pixels_per_cell=cell, cells_per_block=(2, 2)))
    return np.stack(feats).astype(np.float32)


def _subsample(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= MAX_TRAIN:
        return x, y
    idx = np.random.default_rng(seed).choice(len(x), MAX_TRAIN, replace=False)
    return x[idx], y[idx]


def knn_accuracy(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray) -> float:
    clf = KNeighborsClassifier(n_neighbors=min(KNN_K, len(xtr)))
    clf.fit(xtr, ytr)
    return float(np.mean(clf.predict(xte) == yte))


def svm_accuracy(
    xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, seed: int = 0
) -> float:
    clf = make_pipeline(StandardScaler(), LinearSVC(C=0.01, max_iter=5000, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(xtr, ytr)
    return float(np.mean(clf.predict(xte) == yte))


def run_baselines(
    train: dict[str, np.ndarray],
    test: dict[str, np.ndarray],
    ytr: np.ndarray,
    yte: np.ndarray,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy per baseline name (``knn_pixels``, ``svm_hog``, ...) for each feature kind."""
    out: dict[str, float] = {}
    for kind in ("pixels", "hog", "embeddings"):
        if kind not in train:
            continue
        xtr, y = _subsample(train[kind], ytr, seed)
        out[f"knn_{kind}"] = knn_accuracy(xtr, y, test[kind], yte)
        out[f"svm_{kind}"] = svm_accuracy(xtr, y, test[kind], yte, seed)
        log.info(
            "baseline %s: k-NN %.4f, linear SVM %.4f",
            kind,
            out[f"knn_{kind}"],
            out[f"svm_{kind}"],
        )
    return out
