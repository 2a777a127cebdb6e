"""Convolutional Prototype Learning (Yang et al., CVPR 2018) on frozen image embeddings.

IMPROVE section 3.2, equations 9-14: each class i keeps K prototypes ``m_ij``; a sample belongs to a
prototype with probability ``softmax(-gamma * ||f(x) - m_ij||^2)`` over all C*K prototypes (eq. 10),
to a class with the sum over that class's prototypes (eq. 11); the distance-based cross entropy
(DCE, eq. 12) plus ``lambda`` times the squared distance to the nearest own-class prototype (PL,
eq. 13) is the loss (eq. 14).

Feature space (the decision this module makes, recorded in every file it writes):

* ``normalize=True`` (default): embeddings are L2-normalised before CPL, so ``f(x) = x / ||x||``
  (``projection="none"``) or ``f(x) = W x / ||x||`` (``projection="linear"``). The references tune
  gamma = 1-2 for features learned jointly with the prototypes; frozen CLIP / CNN embeddings have an
  arbitrary norm (EfficientNet-Lite0 pooled features: about 28 on Bone Marrow, so squared
  distances in the hundreds), which would make ``exp(-gamma d)`` saturate. On the unit sphere
  squared distances lie in [0, 4], the paper's gamma range means the same for any encoder, and
  cosine geometry is how CLIP embeddings are compared anyway. GAMMA defaults to 1.0.
* The saved prototypes and class embeddings live in that same feature space: L2-normalised
  encoder space for ``projection="none"`` (the prototypes themselves are *not* unit vectors: CPL
  moves them freely), the projected space for ``projection="linear"`` (the projection weights are
  saved beside them). Whatever feeds real-image embeddings to the diffusion model must apply the
  same ``f`` (``PrototypeResult.features``).
* Prototypes that settle. With free prototypes and the references' gamma of 1-2 on unit-norm features,
  DCE is a softmax over ``2 gamma m.f - gamma |m|^2`` whose logits span at most 4, so pushing the
  prototypes apart keeps lowering it and lambda = 0.001 holds them back only weakly: their norm grows
  without end (5.8 after 50 epochs, 7.95 after 200 on Bone Marrow) and the class table depends on the
  number of epochs. ``on_sphere=True`` keeps them at unit norm like the features: DCE becomes a cosine
  softmax of scale ``2 gamma`` (gamma = 5: scale 10), and the learning rate decays to 0 (cosine) so that
  they converge. On the demo's synthetic cells, doubling the epochs from 100 to 200 then moved the class
  table of notebook 04 by at most 3.6 % of a row's norm (free prototypes: 19 %).
  ``prototype_metrics`` also reports the scale-free ``separation_over_compactness``.

Initialisation: K=1 prototypes start at the class means of ``f(x)``; K>1 at a seeded k-means inside
each class (K distinct random class members as starting centres, then 20 Lloyd steps), so the
prototypes start on real modes of the class rather than as noisy copies of one mean.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from improve_lib.core import input_checks
from improve_lib.core.errors import StudyInputError

PROJECTIONS = ("none", "linear")


# ----------------------------------------------------------------------------- losses (eq. 10-13)

def squared_distances(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``||f(x_n) - m_ij||^2`` for features [N, D] and prototypes [C, K, D]; returns [N, C, K]."""
    c, k, d = prototypes.shape
    flat = prototypes.reshape(c * k, d)
    # |a|^2 - 2ab + |b|^2 keeps memory at N*C*K (not N*C*K*D); clamp removes tiny negative round-off.
    dist = features.pow(2).sum(1, keepdim=True) - 2.0 * features @ flat.T + flat.pow(2).sum(1)
    return dist.clamp_min(0.0).reshape(features.shape[0], c, k)


def dce_loss(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, gamma: float) -> torch.Tensor:
    """Distance-based cross entropy (eq. 10-12): mean over the batch of ``-log p(y|x)`` where
    ``p(y|x) = sum_j exp(-gamma d_yj) / sum_kl exp(-gamma d_kl)``; computed with logsumexp."""
    logits = -gamma * squared_distances(features, prototypes)  # [N, C, K]
    n = logits.shape[0]
    log_all = torch.logsumexp(logits.reshape(n, -1), dim=1)
    log_own = torch.logsumexp(logits[torch.arange(n), labels], dim=1)
    return (log_all - log_own).mean()


def prototype_loss(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Prototype loss (eq. 13): mean over the batch of ``min_j ||f(x) - m_yj||^2``."""
    d = squared_distances(features, prototypes)
    return d[torch.arange(d.shape[0]), labels].min(dim=1).values.mean()


# ----------------------------------------------------------------------------- training

@dataclass
class PrototypeResult:
    """Learned prototypes [C, K, D'] (feature space, see module docstring), optional projection
    weight [D', D], class means of f(x) over the training images [C, D'], per-epoch history and the
    parameters used."""

    prototypes: torch.Tensor
    projection: torch.Tensor | None
    class_names: list[str]
    class_means: torch.Tensor
    history: list[dict] = field(default_factory=list)
    params: dict = field(default_factory=dict)

    def features(self, vectors) -> torch.Tensor:
        """``f(x)``: the embeddings mapped into the space the prototypes live in."""
        return cpl_features(as_tensor(vectors, "vectors"), self.projection, self.params.get("normalize", True))


def as_tensor(vectors, name: str) -> torch.Tensor:
    """Embedding vectors ``[N, D]`` checked (finite, 2-D) as a float32 tensor; errors name ``name``."""
    return torch.as_tensor(input_checks.vectors(vectors, name, np.float32))


def _as_labels(labels, n: int, n_classes: int, name: str) -> torch.Tensor:
    return torch.as_tensor(input_checks.labels(labels, n, n_classes, name))


def cpl_features(x: torch.Tensor, projection: torch.Tensor | None, normalize: bool) -> torch.Tensor:
    """f(x), the space CPL learns prototypes in: embeddings L2-normalised (if ``normalize``), then projected."""
    if normalize:
        x = F.normalize(x, dim=1)
    return x if projection is None else x @ projection.T


def _kmeans(x: torch.Tensor, k: int, gen: torch.Generator, steps: int = 20) -> torch.Tensor:
    centres = x[torch.randperm(x.shape[0], generator=gen)[:k]].clone()
    for _ in range(steps):
        assign = torch.cdist(x, centres).argmin(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):  # an emptied cluster keeps its centre
                centres[j] = members.mean(0)
    return centres


def train_prototypes(
    train_vectors,
    train_labels,
    class_names: Sequence[str],
    *,
    k: int,
    gamma: float,
    lam: float,
    projection: str,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    on_sphere: bool,
    normalize: bool = True,
    projection_dim: int | None = None,
    progress: bool = True,
) -> PrototypeResult:
    """Learn K prototypes per class with Adam on ``dce_loss + lam * prototype_loss``.

    ``train_vectors`` [N, D] are frozen embeddings, ``train_labels`` [N] ints in 0..C-1 in the order
    of ``class_names``. ``projection="none"`` trains only the prototypes (f = identity after L2
    normalisation); ``"linear"`` also learns ``W`` [D', D] (``projection_dim`` D', default D,
    initialised to the identity when D' = D). ``on_sphere`` keeps the prototypes at unit norm (projected
    back after every step), like the L2-normalised features they are compared with: DCE is then a cosine
    softmax of scale ``2 gamma`` and the prototypes settle instead of drifting outward (module docstring).
    Deterministic for a ``seed`` on CPU. Every class needs at least ``k`` training images.
    """
    class_names = list(class_names)
    x = as_tensor(train_vectors, "train_vectors")
    c = len(class_names)
    y = _as_labels(train_labels, x.shape[0], c, "train_labels")
    check_settings(k, gamma, lam, projection, epochs, lr, batch_size, on_sphere and normalize)
    if on_sphere and not normalize:
        raise StudyInputError("PROTOTYPES_ON_SPHERE=True needs L2-normalised embeddings (normalize=True)")
    _check_class_sizes(y, class_names, k)
    gen = torch.Generator().manual_seed(seed)
    base = cpl_features(x, None, normalize)
    weight = _initial_projection(projection, base.shape[1], projection_dim, gen)
    with torch.no_grad():
        f0 = base if weight is None else base @ weight.T
        init = [f0[y == i].mean(0, keepdim=True) if k == 1 else _kmeans(f0[y == i], k, gen) for i in range(c)]
    protos = torch.nn.Parameter(torch.stack(init))  # [C, K, D']
    keep_on_sphere = (lambda: protos.data.copy_(F.normalize(protos.data, dim=-1))) if on_sphere else (lambda: None)
    keep_on_sphere()
    params = [protos] + ([weight] if weight is not None else [])
    opt = torch.optim.Adam(params, lr=lr)
    # cosine decay to 0: the prototypes settle at the end instead of jittering at the step size
    n_steps = epochs * -(-x.shape[0] // batch_size)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_steps)

    history = []
    n = x.shape[0]
    epoch_iter = range(1, epochs + 1)
    if progress:
        epoch_iter = tqdm(epoch_iter, desc="CPL", unit="epoch")
    for epoch in epoch_iter:
        sums = _epoch(base, y, weight, protos, opt, decay, keep_on_sphere, gen, gamma, lam, batch_size)
        with torch.no_grad():
            feats = base if weight is None else base @ weight.T
            acc = float((_predict(feats, protos) == y).float().mean())
        history.append({"epoch": epoch, **{key: v / n for key, v in sums.items()}, "train_acc": acc,
                        "prototype_norm": float(protos.detach().norm(dim=-1).mean())})
        if progress:
            epoch_iter.set_postfix(loss=f"{history[-1]['loss']:.4f}", acc=f"{acc:.3f}")

    with torch.no_grad():
        w = None if weight is None else weight.detach().clone()
        feats = cpl_features(x, w, normalize)
        means = torch.stack([feats[y == i].mean(0) for i in range(c)])
    hyper = dict(k=k, gamma=gamma, lam=lam, projection=projection, epochs=epochs, lr=lr,
                 batch_size=batch_size, seed=seed, normalize=normalize, on_sphere=on_sphere)
    return PrototypeResult(protos.detach().clone(), w, class_names, means, history, hyper)


def _epoch(base, y, weight, protos, opt, decay, keep_on_sphere, gen, gamma, lam, batch_size) -> dict[str, float]:
    """One pass of Adam over the shuffled training features; returns the summed losses."""
    sums = {"loss": 0.0, "dce": 0.0, "pl": 0.0}
    for idx in torch.randperm(base.shape[0], generator=gen).split(batch_size):
        feats = base[idx] if weight is None else base[idx] @ weight.T
        dce = dce_loss(feats, y[idx], protos, gamma)
        pl = prototype_loss(feats, y[idx], protos)
        loss = dce + lam * pl
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
        keep_on_sphere()
        for key, val in (("loss", loss), ("dce", dce), ("pl", pl)):
            sums[key] += val.item() * len(idx)
    return sums


def check_settings(k, gamma, lam, projection, epochs, lr, batch_size, on_sphere) -> None:
    """Notebook 03's CPL settings, checked without data; the error names every wrong parameter."""
    if projection not in PROJECTIONS:
        raise StudyInputError(f"PROJECTION={projection!r}: expected one of {PROJECTIONS}")
    if not (isinstance(k, int) and k >= 1):
        raise StudyInputError(f"K={k!r}: expected an integer >= 1")
    bad = [f"{name}={value!r} (expected {rule})" for name, value, ok, rule in (
        ("GAMMA", gamma, gamma > 0, "> 0"), ("LAMBDA", lam, lam >= 0, ">= 0"), ("PROTO_LR", lr, lr > 0, "> 0"),
        ("PROTO_EPOCHS", epochs, epochs >= 1, ">= 1"), ("PROTO_BATCH_SIZE", batch_size, batch_size >= 1, ">= 1"))
        if not ok]
    if bad:
        raise StudyInputError("prototype learning: " + "; ".join(bad))
    if on_sphere and projection != "none":
        raise StudyInputError("PROTOTYPES_ON_SPHERE=True needs PROJECTION='none' on L2-normalised embeddings "
                              "(the prototypes then live where the features do, on the unit sphere)")


def _check_class_sizes(y: torch.Tensor, class_names: list[str], k: int) -> None:
    counts = torch.bincount(y, minlength=len(class_names))
    short = {class_names[i]: int(counts[i]) for i in range(len(class_names)) if counts[i] < k}
    if short:
        raise StudyInputError(
            f"K={k} prototypes per class needs at least {k} training images per class; "
            f"too few in (class: count) {short}")


def _initial_projection(projection: str, d_in: int, projection_dim: int | None,
                        gen: torch.Generator) -> torch.nn.Parameter | None:
    if projection != "linear":
        return None
    d_out = projection_dim or d_in
    if d_out == d_in:
        w0 = torch.eye(d_in)
    else:  # random orthonormal rows keep distances roughly in scale at the start
        q = torch.linalg.qr(torch.randn(max(d_in, d_out), min(d_in, d_out), generator=gen))[0]
        w0 = q.T if d_out <= d_in else q
    return torch.nn.Parameter(w0.contiguous())


# ----------------------------------------------------------------------------- using prototypes

def _predict(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    return squared_distances(features, prototypes).amin(dim=2).argmin(dim=1)


def nearest_prototype_predict(vectors, prototypes, projection=None, normalize: bool = True) -> np.ndarray:
    """Class index (0..C-1) of the nearest prototype for each row of ``vectors`` [N, D], after the
    same ``f`` as training (L2 normalisation when ``normalize``, then ``projection`` [D', D])."""
    protos = torch.as_tensor(np.asarray(prototypes, dtype=np.float32))
    proj = None if projection is None else torch.as_tensor(np.asarray(projection, dtype=np.float32))
    feats = cpl_features(as_tensor(vectors, "vectors"), proj, normalize)
    if protos.ndim != 3 or protos.shape[2] != feats.shape[1]:
        raise StudyInputError(
            f"prototypes: expected [C, K, {feats.shape[1]}] to match the features, got {tuple(protos.shape)}")
    return _predict(feats, protos).numpy()


def class_embedding_from_prototypes(prototypes, class_means) -> torch.Tensor:
    """One vector per class for the diffusion model's class-embedding table: for each class, the
    prototype (of its K) nearest that class's mean of ``f(x)``. K=1 returns the prototypes.
    ``prototypes`` [C, K, D], ``class_means`` [C, D] in the same space; returns [C, D]."""
    protos = torch.as_tensor(np.asarray(prototypes, dtype=np.float32))
    means = torch.as_tensor(np.asarray(class_means, dtype=np.float32))
    if protos.ndim != 3 or means.shape != (protos.shape[0], protos.shape[2]):
        raise StudyInputError(
            f"class_means: expected shape {(protos.shape[0], protos.shape[-1])} for prototypes "
            f"{tuple(protos.shape)}, got {tuple(means.shape)}")
    nearest = (protos - means[:, None, :]).pow(2).sum(-1).argmin(1)  # [C]
    return protos[torch.arange(protos.shape[0]), nearest].clone()


def _figures(train_f, train_y, test_f, test_y, protos, n_classes: int) -> tuple[dict, list]:
    def own_dist(f, y):
        return squared_distances(f, protos)[torch.arange(len(y)), y].amin(1).sqrt()

    pred_test = _predict(test_f, protos)
    flat = protos.reshape(-1, protos.shape[-1])
    owner = torch.arange(protos.shape[0]).repeat_interleave(protos.shape[1])
    pair = torch.cdist(flat, flat)[owner[:, None] != owner[None, :]]
    compact = float(own_dist(test_f, test_y).mean())
    figs = {
        "train_accuracy": float((_predict(train_f, protos) == train_y).float().mean()),
        "test_accuracy": float((pred_test == test_y).float().mean()),
        "compactness_train": float(own_dist(train_f, train_y).mean()),
        "compactness_test": compact,
        "separation_min": float(pair.min()) if len(pair) else float("nan"),
        "separation_mean": float(pair.mean()) if len(pair) else float("nan"),
    }
    figs["separation_over_compactness"] = figs["separation_mean"] / compact if compact > 0 else float("inf")
    cm = torch.zeros(n_classes, n_classes, dtype=torch.long)
    cm.index_put_((test_y, pred_test), torch.ones_like(test_y), accumulate=True)
    return figs, cm.tolist()


def prototype_metrics(result: PrototypeResult, train_vectors, train_labels, test_vectors, test_labels) -> dict:
    """Nearest-prototype accuracy (train, test), compactness (mean Euclidean distance of samples to
    their nearest own-class prototype, train and test), separation (min / mean Euclidean distance
    between prototypes of different classes) and their ratio, for the CPL prototypes (in f-space)
    and, as the baseline, plain class means of the L2-normalised embeddings used as K=1 prototypes.
    Confusion matrices (test; rows = true class, columns = predicted) as lists of lists."""
    c = len(result.class_names)
    normalize = result.params.get("normalize", True)
    tr, te = as_tensor(train_vectors, "train_vectors"), as_tensor(test_vectors, "test_vectors")
    ytr = _as_labels(train_labels, tr.shape[0], c, "train_labels")
    yte = _as_labels(test_labels, te.shape[0], c, "test_labels")
    cpl, cm_cpl = _figures(cpl_features(tr, result.projection, normalize), ytr,
                           cpl_features(te, result.projection, normalize), yte, result.prototypes, c)
    base_tr, base_te = cpl_features(tr, None, normalize), cpl_features(te, None, normalize)
    present = torch.bincount(ytr, minlength=c) > 0
    if not present.all():
        missing = [result.class_names[i] for i in range(c) if not present[i]]
        raise StudyInputError(f"train_labels: no training images for classes {missing}")
    means = torch.stack([base_tr[ytr == i].mean(0) for i in range(c)])[:, None, :]
    base, cm_base = _figures(base_tr, ytr, base_te, yte, means, c)
    return {
        "class_names": list(result.class_names),
        "params": dict(result.params),
        "n_train": int(tr.shape[0]),
        "n_test": int(te.shape[0]),
        "chance_accuracy": 1.0 / c,
        "cpl": cpl,
        "class_means": base,
        "confusion_matrix_test": cm_cpl,
        "confusion_matrix_test_class_means": cm_base,
    }


def feature_space_note(params: dict, d: int) -> str:
    """The space the prototypes live in, in words (stored in the prototypes files' metadata)."""
    space = "L2-normalised encoder embeddings" if params.get("normalize", True) else "raw encoder embeddings"
    if params.get("projection") == "linear":
        space = f"linear projection (projection.safetensors, weight [{d}, D]) of {space}"
    return f"{space}, dim {d}"
