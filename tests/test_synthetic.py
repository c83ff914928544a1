"""ddpmseg.data.synthetic: the .npz formats on shapes64 images, every error, both filter rules."""
import numpy as np
import pytest
from PIL import Image

from conftest import shapes64
from ddpmseg.common.config import ConfigError
from ddpmseg.data.folders import DataError
from ddpmseg.data.synthetic import check_masks, keep_by_uncertainty, load_synthetic


@pytest.fixture(scope="module")
def real():
    """The 20 shapes64 training images and masks, with made-up uncertainty scores."""
    pngs = sorted((shapes64() / "real" / "train").glob("*.png"))
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs])
    masks = np.stack([np.load(p.with_suffix(".npy")) for p in pngs])
    uncertainty = np.random.default_rng(0).random(len(pngs))
    return images, masks, uncertainty


def savez(tmp_path, *arrays) -> str:
    path = str(tmp_path / "samples.npz")
    np.savez(path, *arrays)
    return path


def test_datasetddpm_format_loads(tmp_path, real):
    images, masks, uncertainty = load_synthetic(savez(tmp_path, *real))
    assert images.dtype == np.uint8 and images.shape == (20, 64, 64, 3)
    np.testing.assert_array_equal(images, real[0])
    np.testing.assert_array_equal(masks, real[1])
    np.testing.assert_array_equal(uncertainty, real[2])
    check_masks(masks, number_class=19, ignore_label=None)


def test_datasetgan_format_skips_the_latents(tmp_path, real):
    latents = np.zeros((20, 18, 512), dtype=np.float32)
    images, masks, uncertainty = load_synthetic(savez(tmp_path, real[0], real[1], latents, real[2]))
    np.testing.assert_array_equal(masks, real[1])
    np.testing.assert_array_equal(uncertainty, real[2])


def test_max_data_keeps_the_first_samples(tmp_path, real):
    images, masks, uncertainty = load_synthetic(savez(tmp_path, *real), max_data=5)
    assert len(images) == len(masks) == len(uncertainty) == 5
    np.testing.assert_array_equal(images, real[0][:5])
    assert len(load_synthetic(savez(tmp_path, *real), max_data=500)[0]) == 20  # more than exist: all


def _load_error(path) -> str:
    with pytest.raises(DataError) as e:
        load_synthetic(str(path))
    return str(e.value)


def test_missing_and_unreadable_files(tmp_path, real):
    assert "synthetic dataset not found" in _load_error(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    assert "cannot be read as an .npz" in _load_error(tmp_path / "junk.npz")
    path = savez(tmp_path, *real)
    data = open(path, "rb").read()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])  # truncated mid-download
    assert "cannot be read" in _load_error(tmp_path / "cut.npz")
    np.save(tmp_path / "one.npy", real[0])
    assert "single .npy array" in _load_error(tmp_path / "one.npy")


@pytest.mark.parametrize("count", [2, 5])
def test_wrong_array_count(tmp_path, real, count):
    arrays = (list(real) * 2)[:count]
    assert f"holds {count} arrays" in _load_error(savez(tmp_path, *arrays))


@pytest.mark.parametrize("change, message", [
    (lambda i, m, u: (i.astype(np.float32), m, u), "images (array 1) must be uint8 [N, H, W, 3]"),
    (lambda i, m, u: (i[..., 0], m, u), "images (array 1) must be uint8 [N, H, W, 3]"),
    (lambda i, m, u: (i, m.astype(np.float32), u), "masks (array 2) must be integer class ids"),
    (lambda i, m, u: (i, m, u[:, None]), "uncertainty (last array) must be one number per sample"),
    (lambda i, m, u: (i, m[:19], u), "disagree on the number of samples: images 20, masks 19, uncertainty 20"),
    (lambda i, m, u: (i, m, u[:7]), "uncertainty 7"),
    (lambda i, m, u: (i, m[:, :32, :32], u), "images are 64x64 but masks are 32x32"),
    (lambda i, m, u: (i[:, :, :48], m[:, :, :48], u), "only square images"),
    (lambda i, m, u: (i[:0], m[:0], u[:0]), "holds no samples"),
    (lambda i, m, u: (i, m, np.where(np.arange(20) == 3, np.nan, u)), "first at sample 3"),
])
def test_shape_and_type_errors(tmp_path, real, change, message):
    assert message in _load_error(savez(tmp_path, *change(*real)))


def test_mask_values_are_checked_against_number_class(real):
    masks = real[1].copy()
    check_masks(masks, 19, None)
    with pytest.raises(DataError) as e:
        check_masks(masks, 3, None, where="x.npz")
    assert str(e.value).startswith("x.npz: mask values [3, 4, 5] (first in sample 0) are invalid "
                                   "with number_class=3 (allowed: 0..2)")
    many = np.concatenate([masks] * 15)  # 300 samples: the check runs in chunks
    many[280, 5, 5] = 200
    with pytest.raises(DataError, match=r"\[200\] \(first in sample 280\)"):
        check_masks(many, 19, None)
    masks[7, 0, 0] = 255
    with pytest.raises(DataError, match=r"\[255\] \(first in sample 7\).*allowed: 0..18\)"):
        check_masks(masks, 19, None)
    check_masks(masks, 19, 255)  # the ignore label is a valid mask value
    with pytest.raises(DataError, match="allowed: 0..18 or the ignore_label 0"):
        check_masks(masks, 19, 0)


def _ranks(n: int, seed: int = 1) -> np.ndarray:
    """Distinct scores whose ascending rank is the value itself: sample i has rank u[i]."""
    return np.random.default_rng(seed).permutation(n).astype(np.float64)


def test_published_rule_keeps_sorted_30_to_minus_n_out_plus_30():
    u = _ranks(100)
    kept = keep_by_uncertainty(u, 0.4, "published")
    # n_out = 40: sorted[30:-10] = ranks 30..89, i.e. the 30 most certain and 10 most uncertain are dropped.
    np.testing.assert_array_equal(kept, np.flatnonzero((u >= 30) & (u < 90)))
    assert len(kept) == 60 and np.all(np.diff(kept) > 0)
    for n, portion in ((1000, 0.1), (437, 0.25), (50000, 0.1)):  # the original's expression
        u = np.random.default_rng(n).random(n)
        n_out = int(n * portion)
        expected = np.sort(np.argsort(u)[30:-n_out + 30])
        np.testing.assert_array_equal(keep_by_uncertainty(u, portion, "published"), expected)
    assert len(keep_by_uncertainty(np.random.default_rng(0).random(50000), 0.1, "published")) == 45000


def test_most_uncertain_rule_drops_the_top_scores():
    u = _ranks(100)
    np.testing.assert_array_equal(keep_by_uncertainty(u, 0.4, "most_uncertain"), np.flatnonzero(u < 60))
    np.testing.assert_array_equal(keep_by_uncertainty(u, 0.05, "most_uncertain"), np.flatnonzero(u < 95))
    ties = np.array([0.5, 0.1, 0.5, 0.9, 0.5])  # equal scores: the later samples count as more uncertain
    np.testing.assert_array_equal(keep_by_uncertainty(ties, 0.4, "most_uncertain"), [0, 1, 2])


@pytest.mark.parametrize("rule", ["most_uncertain", "published"])
def test_portion_zero_keeps_everything(rule):
    np.testing.assert_array_equal(keep_by_uncertainty(_ranks(10), 0.0, rule), np.arange(10))


def test_filter_errors():
    with pytest.raises(ConfigError, match=r"needs int\(N \* portion\) > 30, got int\(100 \* 0.3\) = 30"):
        keep_by_uncertainty(_ranks(100), 0.3, "published")
    assert len(keep_by_uncertainty(_ranks(100), 0.31, "published")) == 69  # n_out = 31: just defined
    with pytest.raises(ConfigError, match="uncertainty_filter must be one of"):
        keep_by_uncertainty(_ranks(10), 0.1, "least_certain")
    with pytest.raises(ConfigError, match=r"uncertainty_portion must be in \[0, 1\)"):
        keep_by_uncertainty(_ranks(10), 1.0, "most_uncertain")
