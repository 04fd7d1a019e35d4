"""A digit classifier trained on the real digits at the demo's resolution, to judge generated digits."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from dff.data import load_digits_tensor


def train_classifier(image_size: int = 16, seed: int = 0) -> tuple[MLPClassifier, float]:
    """(classifier on flattened [0, 1] images, held-out accuracy on 25% of the real digits)."""
    x, y = load_digits_tensor(image_size, 1)
    X = x.flatten(1).numpy()
    Xtr, Xte, ytr, yte = train_test_split(X, y.numpy(), test_size=0.25, random_state=seed, stratify=y.numpy())
    clf = MLPClassifier(hidden_layer_sizes=(256,), max_iter=400, random_state=seed).fit(Xtr, ytr)
    return clf, float(clf.score(Xte, yte))


def judge(clf: MLPClassifier, images: torch.Tensor, threshold: float = 0.9) -> dict:
    """Share of images labelled with confidence >= threshold, and the class histogram of those labels."""
    p = clf.predict_proba(images[:, :1].flatten(1).cpu().numpy())  # (N, 10)
    labels, conf = p.argmax(1), p.max(1)
    hist = np.bincount(labels[conf >= threshold], minlength=10)
    return {"confident_share": float((conf >= threshold).mean()), "histogram": hist.tolist(),
            "classes_present": int((hist > 0).sum())}
