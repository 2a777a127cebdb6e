"""A yardstick for the fidelity numbers: how far PRDC and KID move when real images lose only fine detail.

Notebook 06 measures samples against the held-out real images in the encoder's space. When samples train a
classifier nearly as well as real images and still score PRDC precision 0 (the demo), the question is what the
metric sees. This tool asks it of the run's own real training images: each is blurred with a Gaussian of
``--blur`` sigmas (pixels at the run's resolution; 0 leaves it as it is) and measured exactly as a set of samples
is (notebook 06's encoder, resizing, embedding space, k = 5 PRDC, KID), beside the run's arms. Each row also gives
the set's fine detail against the unblurred training images (``improve_lib.metrics.tone.detail``, the variance of
the Laplacian; the screening tables' "detail" column), so a sample set's detail ratio can be read against the
blur that removes as much.

    python tools/fidelity_yardstick.py RUN_DIR [RUN_DIR ...] --blur 0 0.5 0.7 1.0 --out results/fidelity_yardstick

RUN_DIR is a run that has been through notebook 06 (its parameters are read from its params.yaml). Writes
``<out>/yardstick.csv``, ``<out>/yardstick.md`` and ``<out>/yardstick.json`` (the command, git commit, package
versions and the sha256 of every run's metrics.json). Blurred images are written to a temporary folder and
embedded with a temporary cache, both removed; nothing in the run folders changes except the resized real images
notebook 06 already keeps under ``fidelity/``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from skimage import filters  # noqa: E402

from improve_lib import data  # noqa: E402
from improve_lib.conditioning import embeddings, encoders, prototype_files  # noqa: E402
from improve_lib.core import manifest, run_layout  # noqa: E402
from improve_lib.core.errors import StudyInputError  # noqa: E402
from improve_lib.core.files import atomic_write_json, atomic_write_text, sha256_file  # noqa: E402
from improve_lib.diffusion import sample  # noqa: E402
from improve_lib.metrics import fidelity, probe, tone  # noqa: E402

NEEDED = ("RESOLUTION", "ENCODER", "EVAL_SPLIT", "EMBED_BATCH_SIZE", "ARMS", "N_PER_CLASS", "SEED", "DATASET")


def run_params(run_dir: Path) -> dict:
    """The run's resolved parameters, checked for what this tool reads and for notebook 06's outputs."""
    path = run_dir / "params.yaml"
    if not path.is_file():
        raise StudyInputError(f"{run_dir}: no params.yaml; pass a run folder (runs/<name>, a sweep's run)")
    params = yaml.safe_load(path.read_text()) or {}
    missing = [k for k in NEEDED if k not in params]
    if missing:
        raise StudyInputError(f"{path}: lacks {missing}")
    if not run_layout.metrics_file(run_dir).is_file():
        raise StudyInputError(f"{run_dir}: no {run_layout.metrics_file(run_dir).name}; run notebooks up to 06 first")
    return params


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """``images`` ``[N, 3, R, R]`` in [0, 1], each channel blurred by a Gaussian of ``sigma`` pixels
    (skimage.filters.gaussian, edges reflected); ``sigma`` 0 returns them unchanged."""
    if sigma == 0:
        return images
    arr = images.permute(0, 2, 3, 1).double().numpy()
    out = np.stack([filters.gaussian(a, sigma=sigma, channel_axis=-1, mode="reflect", preserve_range=True) for a in arr])
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().clamp(0, 1)


def by_class(vectors: np.ndarray, labels: np.ndarray, class_names) -> dict[str, np.ndarray]:
    """``vectors`` split by class name (``labels`` index ``class_names``), as notebook 06 passes them to fidelity_table."""
    return {c: vectors[labels == i] for i, c in enumerate(class_names)}


def measure_run(run_dir: Path, sigmas, scratch: Path, progress: bool = False) -> pd.DataFrame:
    """One row per set: the run's real training images blurred by each sigma, then each arm's samples;
    columns ``detail_ratio`` and the pooled ("all" classes) PRDC and KID against the run's eval split."""
    p = run_params(run_dir)
    res = int(p["RESOLUTION"])
    class_names = data.class_names_of(data.read_split(run_dir))
    encoder = encoders.load_encoder(p["ENCODER"])
    # the held-out images and the arms' samples embedded as notebook 06 embeds them (through the run's cache)
    vectors, labels = probe.embedded_sets(run_dir, p["ARMS"], class_names, int(p["N_PER_CLASS"]), res, encoder,
                                          p.get("CACHE_DIR"), batch_size=int(p["EMBED_BATCH_SIZE"]),
                                          progress=progress, eval_split=p["EVAL_SPLIT"])
    train = fidelity.resized_real(run_dir, "train", res)
    train_images = data.load_images(train.path, res)
    images = {}  # each measured set's images, in the order of the table
    for s in sigmas:
        name = f"real train, blur {s:g} px"
        folder = scratch / run_dir.name / f"blur_{s:g}"
        paths = [sample.save_png(im, folder / f"{i:05d}.png") for i, im in enumerate(blurred(train_images, s))]
        # blurred images go through a throwaway cache: the user's embedding cache keeps only their own images
        vectors[name] = embeddings.embed_paths(paths, encoder, scratch / "cache", batch_size=int(p["EMBED_BATCH_SIZE"]),
                                               progress=progress)
        labels[name] = train.label.to_numpy()
        images[name] = data.load_images(paths, res)  # as written: 8-bit, like the samples
    for arm in p["ARMS"]:
        name = f"{arm} samples"
        vectors[name], labels[name] = vectors[arm], labels[arm]
        images[name] = data.load_images(sample.read_samples(run_dir, arm, class_names, int(p["N_PER_CLASS"])).path, res)
    sets = {name: by_class(vectors[name], labels[name], class_names) for name in images}
    detail = {name: r["detail_ratio"] for name, r in tone.likeness(train_images, images).items()}
    space = prototype_files.load_space(run_dir)
    table = fidelity.fidelity_table(by_class(vectors[probe.TEST], labels[probe.TEST], class_names), sets,
                                    space["prototypes"].numpy(), projection=space["projection"],
                                    normalize=space["normalize"], class_names=class_names, seed=int(p["SEED"]))
    table = table[table.class_name == "all"]
    return pd.DataFrame({
        "run": run_dir.name, "dataset": p["DATASET"], "scored on": p["EVAL_SPLIT"], "set": table.arm.to_numpy(),
        "detail_ratio": [detail[a] for a in table.arm],
        **{f"{k} %": 100 * table[k].to_numpy() for k in ("precision", "recall", "coverage")},
        "density": table.density.to_numpy(), "KID": table.kid_mean.to_numpy()})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders that have been through notebook 06")
    ap.add_argument("--blur", nargs="+", type=float, default=[0.0, 0.5, 0.7, 1.0],
                    help="Gaussian sigmas in pixels at the run's resolution (0: unblurred)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--progress", action="store_true", help="progress bars while embedding")
    args = ap.parse_args(argv)
    if any(s < 0 for s in args.blur):
        raise StudyInputError(f"--blur {args.blur}: sigmas are 0 or more pixels")
    for run in args.runs:  # every run checked before any work
        run_params(run)
    with tempfile.TemporaryDirectory() as scratch:
        result = pd.concat([measure_run(r, args.blur, Path(scratch), args.progress) for r in args.runs],
                           ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python tools/fidelity_yardstick.py " + " ".join(sys.argv[1:] if argv is None else argv)
    atomic_write_text(args.out / "yardstick.csv", result.to_csv(index=False, float_format="%.4g"))
    atomic_write_text(args.out / "yardstick.md", f"`{command}`\n\n" + result.to_markdown(index=False, floatfmt=".3g") + "\n")
    atomic_write_json(args.out / "yardstick.json", {
        "command": command, **manifest.provenance(),
        "runs": {str(r): sha256_file(run_layout.metrics_file(r)) for r in args.runs},
        "rows": result.to_dict("records")})
    print(result.round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
