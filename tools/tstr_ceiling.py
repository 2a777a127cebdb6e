"""The real-image ceiling of the TSTR classifiers, and what each costs: trained on the real training
split, tested on the real test split, at the study's resolution. No diffusion model is involved.

    python tools/tstr_ceiling.py --dataset bone_marrow --data-dir ../shared/data/bone_marrow \
        --classifier small_cnn:12 small_cnn:30 efficientnet_lite0@64:15 efficientnet_lite0@128:5 \
        --out results/tstr_ceiling

A classifier is ``ARCH[@INPUT]:EPOCHS``; ``@INPUT`` is the side efficientnet_lite0 upsamples to
(``tstr.PRETRAINED_INPUT`` when omitted). Each is trained with notebook 06's budget otherwise (batch 64,
AdamW lr 1e-3, cosine, the same augmentation) for every ``--seeds`` seed on the study's own split
(``data.build_split``: N_TRAIN train and N_TEST test images per class, the split seed). Writes
``<dataset>_<R>px.csv/.md`` (macro F1 and accuracy per classifier, mean over seeds, and its training
seconds, measured here in one process one after another: compare them as ratios) and ``<dataset>.json``
(command, git commit, package versions, sha256 of the split's rows). Nothing of the dataset is copied.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from improve_lib import data  # noqa: E402
from improve_lib.core import manifest
from improve_lib.core.errors import StudyInputError  # noqa: E402
from improve_lib.core.files import atomic_write_json, atomic_write_text  # noqa: E402
from improve_lib.metrics import scores, tstr


def parse_classifier(spec: str) -> tuple[str, int, int]:
    """``ARCH[@INPUT]:EPOCHS`` -> (arch, input size, epochs); the error names the spec at fault."""
    try:
        head, epochs = spec.rsplit(":", 1)
        arch, _, size = head.partition("@")
        parsed = arch, int(size) if size else tstr.PRETRAINED_INPUT, int(epochs)
    except ValueError:
        raise StudyInputError(f"--classifier {spec!r}: expected ARCH[@INPUT]:EPOCHS, e.g. efficientnet_lite0@64:15")
    if parsed[0] not in tstr.ARCHS or parsed[2] < 1:
        raise StudyInputError(f"--classifier {spec!r}: ARCH one of {tstr.ARCHS}, EPOCHS >= 1")
    return parsed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, choices=("bone_marrow", "ham10000", "synthetic"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--classifier", nargs="+", required=True, help="ARCH[@INPUT]:EPOCHS ...")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--n-train", type=int, default=100)
    p.add_argument("--n-test", type=int, default=50)
    p.add_argument("--min-per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="the split's seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="classifier seeds")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    specs = [(s, *parse_classifier(s)) for s in args.classifier]  # all checked before any work
    out = Path(args.out)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        split = data.build_split(args.dataset, args.data_dir, scratch, args.n_train, args.n_test, args.seed,
                                 None, args.min_per_class, args.resolution, verify=False, progress=False)
        table = split.table
        names = list(split.class_names)
        tr, te = table[table.split == "train"], table[table.split == "test"]
        x_tr, y_tr = data.load_images(tr.path, args.resolution), tr.label.to_numpy()
        x_te, y_te = data.load_images(te.path, args.resolution), te.label.to_numpy()
        digest = data.split_sha256(table)
    for spec, arch, size, epochs in specs:
        f1, acc, seconds = [], [], []
        for s in args.seeds:
            started = time.perf_counter()
            model = tstr.train_classifier(x_tr, y_tr, len(names), arch=arch, epochs=epochs, batch_size=64, lr=1e-3,
                                          seed=s, progress=False, input_size=size)
            result = scores.classification_scores(y_te, tstr.predict(model, x_te), names)
            seconds.append(time.perf_counter() - started)
            f1.append(100 * result["f1"])
            acc.append(100 * result["accuracy"])
        rows.append({"classifier": spec, "arch": arch, "input_px": size if arch == "efficientnet_lite0" else args.resolution,
                     "epochs": epochs, "seeds": len(args.seeds), "macro F1 %": float(np.mean(f1)),
                     "F1 std %": float(np.std(f1, ddof=1)) if len(f1) > 1 else 0.0,
                     "accuracy %": float(np.mean(acc)), "train+test seconds": float(np.mean(seconds))})
        print(f"{spec}: F1 {np.mean(f1):.1f} %, {np.mean(seconds):.0f} s per seed", flush=True)
    result = pd.DataFrame(rows)
    base = result["train+test seconds"].iloc[0]
    result["time vs first"] = result["train+test seconds"] / base
    name = f"{args.dataset}_{args.resolution}px"
    atomic_write_text(out / f"{name}.csv", result.to_csv(index=False, float_format="%.4g"))
    atomic_write_text(out / f"{name}.md", result.to_markdown(index=False, floatfmt=".3g") + "\n")
    atomic_write_json(out / f"{args.dataset}.json", {
        "command": "python tools/tstr_ceiling.py " + " ".join(sys.argv[1:] if argv is None else argv),
        **manifest.provenance(), "split_sha256": digest, "classes": names, "n_train": int(len(y_tr)),
        "n_test": int(len(y_te)), "rows": rows})
    print(result.round(2).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
