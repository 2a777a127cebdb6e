"""Encoders (offline), the embedding cache, and the embeddings file."""
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from improve_lib.conditioning.embeddings import (check_class_sets, default_cache_dir, embed_paths, load_embeddings,
                                                 save_embeddings)
from improve_lib.conditioning.encoders import Encoder, load_encoder
from improve_lib.core.errors import StudyInputError

SHARED_DATA = Path(os.environ.get("IMPROVE_SHARED_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
SMALL_ARCH = "ViT-S-32"  # the smallest ViT in open_clip's list; random weights, never downloaded


pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread: see conftest.one_thread


@pytest.fixture(scope="module")
def clip_checkpoints(tmp_path_factory):
    """A randomly initialised open_clip model saved two ways: fp16 safetensors, and a torch file with
    a {"state_dict": ...} wrapper and DataParallel 'module.' prefixes."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms(SMALL_ARCH, pretrained=None, pretrained_text=False)
    model = model.half().float().eval()  # weights exactly representable in the fp16 files below
    sd = {k: v.half().contiguous() for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("ckpt")
    save_file(sd, str(folder / "small.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, folder / "small.pt")
    return model, folder


def _image_batch(n=2, size=224):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_open_clip_local_checkpoints_load_strictly(clip_checkpoints):
    model, folder = clip_checkpoints
    x = _image_batch()
    with torch.inference_mode():
        reference = model.encode_image(x)
    for name in ("small.safetensors", "small.pt"):
        enc = load_encoder(f"open_clip:{SMALL_ARCH}:{folder / name}")
        assert enc.is_clip and enc.dim == reference.shape[1]
        assert enc.id.startswith(f"open_clip:{SMALL_ARCH}:{name}@sha256:")
        assert torch.allclose(enc.encode(x), reference, atol=1e-5)  # the file's weights, not a fresh init
        assert enc.forward_count == 1
        assert enc.preprocess(Image.new("RGB", (300, 200))).shape == (3, 224, 224)


def test_open_clip_checkpoint_of_other_architecture_is_named(clip_checkpoints):
    _, folder = clip_checkpoints
    path = folder / "small.safetensors"
    with pytest.raises(StudyInputError) as err:
        load_encoder(f"open_clip:ViT-B-32:{path}")
    msg = str(err.value)
    assert str(path) in msg and "'ViT-B-32'" in msg and "visual." in msg


def test_open_clip_missing_file_and_unknown_arch():
    with pytest.raises(StudyInputError, match="not found"):
        load_encoder("open_clip:ViT-B-32:/nonexistent/weights.safetensors")
    with pytest.raises(StudyInputError, match="no architecture"):
        load_encoder("open_clip:ViT-Q-99:openai")
    with pytest.raises(StudyInputError, match="known"):
        load_encoder("open_clip:ViT-B-32:no_such_tag")


def test_open_clip_tag_without_weights_fails_fast_with_help(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    start = time.monotonic()
    with pytest.raises(StudyInputError) as err:
        load_encoder("open_clip:ViT-B-32:openai")
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "internet" in msg and "open_clip:ViT-B-32:/path/to/file.safetensors" in msg


def test_open_clip_tag_found_on_disk_loads_offline_with_its_quickgelu(clip_checkpoints, monkeypatch):
    """A tag whose weights are already on disk loads with the hub forced offline, and a QuickGELU
    tag (like 'openai') gets QuickGELU even when the architecture name lacks '-quickgelu'."""
    import open_clip
    import open_clip.factory
    from open_clip.transformer import QuickGELU

    _, folder = clip_checkpoints
    real = open_clip.get_pretrained_cfg

    def fake_cfg(arch, tag):
        if tag == "cached_tag":
            return {"file": str(folder / "small.safetensors"), "quick_gelu": True}
        return real(arch, tag)

    monkeypatch.setattr(open_clip, "get_pretrained_cfg", fake_cfg)
    monkeypatch.setattr(open_clip.factory, "get_pretrained_cfg", fake_cfg)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    enc = load_encoder(f"open_clip:{SMALL_ARCH}:cached_tag")
    assert enc.id == f"open_clip:{SMALL_ARCH}:cached_tag" and enc.is_clip
    assert any(isinstance(m, QuickGELU) for m in enc.model.visual.modules())
    assert "HF_HUB_OFFLINE" not in os.environ  # the offline switch was only for the load


@pytest.mark.parametrize("spec", ["resnet50", "open_clip:ViT-B-32", "open_clip::openai", "efficientnet-lite0:huge", ""])
def test_unknown_encoder_string_lists_accepted_forms(spec):
    with pytest.raises(StudyInputError) as err:
        load_encoder(spec)
    if not spec.startswith("efficientnet"):
        assert "open_clip:<ARCH>" in str(err.value) and "efficientnet-lite0" in str(err.value)


def _real_images():
    root = SHARED_DATA / "bone_marrow"
    if not root.is_dir():
        if os.environ.get("CI"):  # CI always has the shared data: a skip there would hide a failure
            raise FileNotFoundError(f"CI expects the shared development data at {root}")
        pytest.skip(f"real data not found at {root} (set IMPROVE_SHARED_DATA to the shared data folder)")
    return sorted((root / "EOS").glob("*.jpg"))[0], sorted((root / "LYT").glob("*.jpg"))[0]


def test_efficientnet_embeddings_are_sensible():
    eos, lyt = _real_images()
    enc = load_encoder("efficientnet-lite0")
    assert enc.dim == 1280 and not enc.is_clip and "not a CLIP" in enc.description
    img = Image.open(eos).convert("RGB")  # 250 x 250
    crops = [img.crop((0, 0, 210, 210)), img.crop((40, 40, 250, 250))]  # overlap most of the cell
    other = Image.open(lyt).convert("RGB")
    v = enc.encode(torch.stack([enc.preprocess(im) for im in crops + [img, other]])).numpy()
    assert v.shape == (4, 1280) and np.isfinite(v).all()
    cos = v @ v.T / np.outer(np.linalg.norm(v, axis=1), np.linalg.norm(v, axis=1))
    assert cos[0, 1] > cos[2, 3], f"crops {cos[0, 1]:.3f} vs different cells {cos[2, 3]:.3f}"
    assert np.linalg.norm(v[0] - v[1]) < np.linalg.norm(v[2] - v[3])


def _noise_images(folder, n):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"img_{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_cache_hit_runs_no_forward_and_corrupt_entry_is_recomputed(tmp_path):
    paths = _noise_images(tmp_path, 5)
    cache = tmp_path / "cache"
    enc = load_encoder("efficientnet-lite0:64")
    first = embed_paths(paths + paths[:1], enc, cache, batch_size=2, progress=False)
    assert first.shape == (6, 1280) and first.dtype == np.float32
    assert enc.forward_count == 3  # 5 distinct images in batches of 2; the duplicate is not re-encoded
    assert np.array_equal(first[0], first[5])

    fresh = load_encoder("efficientnet-lite0:64")  # a new process would start like this
    again = embed_paths(paths, fresh, cache, batch_size=2, progress=False)
    assert fresh.forward_count == 0 and np.array_equal(again, first[:5])

    entries = sorted(cache.rglob("*.f32"))
    assert len(entries) == 5 and not list(cache.rglob("*.tmp*"))
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # a torn write
    raw = bytearray(entries[1].read_bytes())
    raw[7] ^= 0xFF  # a flipped bit
    entries[1].write_bytes(bytes(raw))
    repaired = embed_paths(paths, fresh, cache, batch_size=2, progress=False)
    assert fresh.forward_count == 1  # both damaged entries recomputed in one batch
    assert np.array_equal(repaired, first[:5])  # bit for bit: a batch of 2 as when they were first computed
    embed_paths(paths, fresh, cache, batch_size=2, progress=False)
    assert fresh.forward_count == 1
    embed_paths(paths[:1], fresh, cache, batch_size=4, progress=False)  # another batch size: its own entries
    assert fresh.forward_count == 2

    other = load_encoder("efficientnet-lite0:96")  # another encoder id never reads these entries
    embed_paths(paths[:1], other, cache, progress=False)
    assert other.forward_count == 1


def test_a_vector_does_not_depend_on_what_the_cache_held_or_its_batch_mates(tmp_path):
    """One thread, where a CPU convolution's rounding follows the batch's size (EfficientNet-Lite0: batches under 16
    round otherwise, about 1e-5): the vectors of 20 images are the same bit for bit when computed into an empty cache
    (one batch) and when 3 of them were cached by an earlier call (a batch of 3, then one of 17)."""
    paths = _noise_images(tmp_path, 20)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        enc = load_encoder("efficientnet-lite0:64")
        alone = embed_paths(paths, enc, tmp_path / "empty", progress=False)
        embed_paths(paths[3:6], enc, tmp_path / "history", progress=False)
        after = embed_paths(paths, enc, tmp_path / "history", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(alone, after)


def test_bad_images_and_non_finite_embeddings_name_the_path(tmp_path):
    good = _noise_images(tmp_path, 1)[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    enc = load_encoder("efficientnet-lite0:64")
    with pytest.raises(StudyInputError, match="broken.jpg"):
        embed_paths([good, broken], enc, tmp_path / "cache", progress=False)
    with pytest.raises(StudyInputError, match="missing.png"):
        embed_paths([tmp_path / "missing.png"], enc, tmp_path / "cache", progress=False)
    nan_encoder = Encoder(id="nan-test", dim=4, description="test", is_clip=False,
                          preprocess=lambda im: torch.zeros(3, 8, 8), model=torch.nn.Identity(),
                          forward=lambda b: torch.full((b.shape[0], 4), float("nan")))
    with pytest.raises(StudyInputError, match="img_0.png"):
        embed_paths([good], nan_encoder, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").rglob("*.f32"))  # nothing cached from the failed runs


def test_embeddings_file_round_trip_and_validation(tmp_path):
    vectors = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    run = tmp_path / "run"  # the file lies in a run's embeddings/: images inside the run are stored relative to it
    images = [run / "data" / "images" / n for n in ("a.jpg", "b.jpg", "c.jpg")] + [tmp_path / "dataset" / "d.jpg"]
    path = save_embeddings(run / "embeddings" / "train.npz", images, [0, 1, 1, 0],
                           ["BLA", "EOS"], vectors, "efficientnet-lite0")
    with np.load(path) as raw:
        assert raw["paths"].tolist() == ["data/images/a.jpg", "data/images/b.jpg", "data/images/c.jpg", str(images[3])]
    emb = load_embeddings(path)
    assert emb["paths"] == [str(p) for p in images] and emb["class_names"] == ["BLA", "EOS"]
    assert emb["encoder_id"] == "efficientnet-lite0" and np.array_equal(emb["vectors"], vectors)
    assert emb["labels"].tolist() == [0, 1, 1, 0] and emb["file"] == str(path)
    check_class_sets(emb, ["BLA", "EOS"])
    with pytest.raises(StudyInputError, match=r"train.npz: class_names .*missing \['LYT'\], extra \['EOS'\]"):
        check_class_sets(emb, ["BLA", "LYT"])
    with pytest.raises(StudyInputError, match="order"):
        check_class_sets(emb, ["EOS", "BLA"])
    bad = vectors.copy()
    bad[2, 0] = np.inf
    with pytest.raises(StudyInputError, match="c.jpg"):
        save_embeddings(tmp_path / "bad.npz", ["a", "b", "c.jpg", "d"], [0, 1, 1, 0], ["BLA", "EOS"], bad, "x")
    with pytest.raises(StudyInputError, match="labels"):
        save_embeddings(tmp_path / "bad.npz", ["a", "b", "c", "d"], [0, 1, 2, 0], ["BLA", "EOS"], vectors, "x")
    np.savez(tmp_path / "short.npz", paths=np.array(["a"]), labels=np.array([0]), class_names=np.array(["A"]),
             vectors=np.zeros((2, 3), np.float32), encoder_id=np.array("x"))
    with pytest.raises(StudyInputError, match="2 vectors"):
        load_embeddings(tmp_path / "short.npz")
    (tmp_path / "torn.npz").write_bytes(path.read_bytes()[:200])
    with pytest.raises(StudyInputError, match="torn.npz"):
        load_embeddings(tmp_path / "torn.npz")
    assert not list(tmp_path.glob("*.tmp*"))


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("IMPROVE_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("IMPROVE_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "improve_study" / "embeddings"
