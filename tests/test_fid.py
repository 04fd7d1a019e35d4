"""FID/KID (dff.evaluation): the Fréchet distance against closed forms and torchmetrics, KID's
unbiasedness, the shipped digits feature extractor, and the clear errors."""
import importlib.util
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from dff.data import load_digits_tensor
from dff.evaluation import (
    DigitsFeatures,
    InceptionFeatures,
    TextureFeatures,
    compute_features,
    evaluate_generation,
    fid_from_features,
    get_extractor,
    kid_from_features,
    load_image_folder,
)
from dff.evaluation import features as features_mod
from dff.evaluation.features import DIGITS_INFO, TEXTURE_INFO, digits_split, texture_heldout_patches
from dff.evaluation.fid import frechet_distance, mmd2_unbiased, polynomial_kernel


@pytest.fixture(scope="module")
def digits():
    return load_digits_tensor(16, 1)


@pytest.fixture(scope="module")
def extractor():
    return DigitsFeatures.pretrained()


@pytest.fixture(scope="module")
def real_features(digits, extractor):
    return compute_features(extractor, digits[0])


def noised(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


def with_moments(mu: np.ndarray, cov: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n samples whose sample mean and (N-1) covariance are exactly mu and cov."""
    z = np.random.default_rng(seed).standard_normal((n, len(mu)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # sample covariance I
    return mu + z @ np.linalg.cholesky(cov).T


# ---------------------------------------------------------------------- the extractor
def test_shipped_weights_classify_heldout_digits(digits, extractor):
    x, y = digits
    _, test = digits_split(y, seed=0)
    with torch.no_grad():
        acc = (extractor.classify(x[test]).argmax(1) == y[test]).float().mean().item()
    assert acc > 0.95, acc
    info = json.loads(DIGITS_INFO.read_text())
    assert info["seed"] == 0 and info["accuracy"] == pytest.approx(acc, abs=1e-3)
    assert features_mod.DIGITS_WEIGHTS.stat().st_size < 500_000
    assert extractor(x[:3]).shape == (3, 64)


def test_shipped_texture_judge_classifies_heldout_patches_and_rejects_noise():
    """The latent demo's judge: every held-out crop of brick, grass and gravel labelled right (the JSON
    states it), and images that are no texture (noise, flat grey, heavy blur) labelled "none"."""
    judge = TextureFeatures.pretrained()
    info = json.loads(TEXTURE_INFO.read_text())
    size = info["size"]
    assert judge.input_size == (size, size)
    x, y = texture_heldout_patches(size)
    rows, cols = (128 - size) // 8 + 1, (512 - size) // 8 + 1  # crops every 8 pixels of a 128 x 512 quarter
    assert torch.bincount(y).tolist() == [rows * cols] * 3
    with torch.no_grad():
        acc = (judge.classify(x).argmax(1) == y).float().mean().item()
        g = torch.Generator().manual_seed(0)
        blurred = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 8), scale_factor=8, mode="bilinear")
        not_textures = torch.cat([torch.rand(16, 1, size, size, generator=g), torch.full((4, 1, size, size), 0.4),
                                  blurred[::len(x) // 20]])
        none = judge.classify(not_textures).argmax(1)
    assert acc == 1.0 and info["accuracy"] == 1.0 and info["classes"] == ["brick", "grass", "gravel", "none"]
    assert (none == 3).all(), none.tolist()
    sure = judge.recognise(x)  # confidence >= 0.9: nearly all held-out crops, and never a wrong texture
    assert (sure == y).float().mean() >= 0.99 and ((sure == y) | (sure == -1)).all()
    assert (judge.recognise(not_textures) == -1).all()
    assert judge(x[:2]).shape == (2, 64) and isinstance(get_extractor("textures"), TextureFeatures)
    assert features_mod.TEXTURE_WEIGHTS.stat().st_size < 500_000


def test_extractor_converts_rgb_and_size_with_warning(digits, extractor):
    x = digits[0][:80]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matching inputs: no warning
        gray = compute_features(extractor, x)
    with pytest.warns(UserWarning, match=r"3 channel\(s\) converted to 1"):
        rgb = compute_features(extractor, x.repeat(1, 3, 1, 1), batch_size=32)  # luma of gray RGB = gray
    np.testing.assert_allclose(rgb, gray, atol=1e-4)
    with pytest.warns(UserWarning, match="32x32 resized to 16x16"):
        big = compute_features(extractor, torch.nn.functional.interpolate(x, size=32, mode="bilinear"))
    assert big.shape == gray.shape


def test_missing_weights_error_says_how_to_regenerate(monkeypatch, tmp_path):
    monkeypatch.setattr(features_mod, "DIGITS_WEIGHTS", tmp_path / "gone.safetensors")
    with pytest.raises(FileNotFoundError, match="scripts/train_digits_features.py"):
        DigitsFeatures.pretrained()


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed")
def test_inception_without_torch_fidelity_names_the_package():
    with pytest.raises(ModuleNotFoundError, match=r"pip install torch-fidelity"):
        InceptionFeatures()
    with pytest.raises(ModuleNotFoundError, match="torch-fidelity"):
        get_extractor("inception", "pt_inception-2015-12-05.pth")


def test_get_extractor_names_and_custom_factories(tmp_path):
    assert isinstance(get_extractor("digits"), DigitsFeatures)
    assert isinstance(get_extractor("dff.evaluation.features:DigitsFeatures.pretrained"), DigitsFeatures)
    (tmp_path / "my_features.py").write_text(
        "import torch.nn as nn\n"
        "def make(weights=None):\n"
        "    m = nn.Sequential(nn.Flatten(), nn.Linear(256, 8))\n"
        "    m.input_channels, m.input_size = 1, (16, 16)\n"
        "    return m\n")
    m = get_extractor(f"{tmp_path / 'my_features.py'}:make")
    assert compute_features(m, torch.rand(5, 1, 16, 16)).shape == (5, 8)
    with pytest.raises(ValueError, match="unknown feature extractor 'vgg'"):
        get_extractor("vgg")
    with pytest.raises(AttributeError, match="no attribute"):
        get_extractor("dff.evaluation.features:nope")


# ---------------------------------------------------------------------- FID
def test_fid_of_a_set_with_itself_is_zero(real_features):
    assert fid_from_features(real_features, real_features) == pytest.approx(0.0, abs=1e-6)


def test_fid_grows_monotonically_with_noise(digits, extractor, real_features):
    x = digits[0]
    fids = [fid_from_features(compute_features(extractor, noised(x, s)), real_features) for s in (0.05, 0.1, 0.2, 0.4)]
    assert 0 < fids[0] < fids[1] < fids[2] < fids[3], fids
    assert fids[-1] > 10 * fids[0]


def test_fid_matches_the_closed_form_of_two_gaussians():
    rng = np.random.default_rng(0)
    d = 6
    a, b = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)  # non-commuting covariances
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    f1, f2 = with_moments(mu1, s1, 300, 1), with_moments(mu2, s2, 500, 2)
    # closed form via scipy's general matrix square root of S1 S2
    from scipy.linalg import sqrtm

    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2)))
    assert fid_from_features(f1, f2) == pytest.approx(expected, rel=1e-8)
    # diagonal covariances: ||mu1 - mu2||^2 + sum (sqrt(v1) - sqrt(v2))^2
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    closed = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(closed, rel=1e-12)
    assert fid_from_features(with_moments(m1, np.diag(v1), 50, 3), with_moments(m2, np.diag(v2), 80, 4)) == \
        pytest.approx(closed, rel=1e-9)


def test_fid_and_kid_match_torchmetrics(digits, extractor, real_features):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    x = digits[0]
    fake = noised(x[:600], 0.1)
    ours = fid_from_features(compute_features(extractor, fake), real_features)
    tm = FrechetInceptionDistance(feature=extractor)
    tm.update(x, real=True)
    tm.update(fake, real=False)
    assert float(tm.compute()) == pytest.approx(ours, rel=1e-6)

    class Float64(torch.nn.Module):  # torchmetrics' KID keeps the extractor's dtype
        def forward(self, imgs):
            return extractor(imgs).double()

    f_fake = compute_features(extractor, fake)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "will save all targets and predictions in buffer"
        tm = KernelInceptionDistance(feature=Float64(), subsets=1, subset_size=600)
    tm.update(x[:600], real=True)
    tm.update(fake, real=False)
    kid_tm, _ = tm.compute()  # a subset of all 600 of each: the permutation does not matter
    kid, std = kid_from_features(real_features[:600], f_fake, subsets=1, subset_size=600)
    assert float(kid_tm) == pytest.approx(kid, rel=1e-9) and std == 0


def test_too_few_images_for_fid():
    f = np.random.default_rng(0).standard_normal((40, 64))
    with pytest.raises(ValueError, match="FID with 64-d features needs at least 65 images per set, got 40"):
        fid_from_features(f, np.random.default_rng(1).standard_normal((100, 64)))


# ---------------------------------------------------------------------- KID
def test_kid_estimator_is_unbiased():
    """Mean over many pairs of samples of one Gaussian: ~0 for the unbiased estimator, while the
    biased one (diagonal kept) is clearly positive."""
    rng = np.random.default_rng(0)
    n, d, reps = 40, 8, 300
    unbiased, biased = [], []
    for _ in range(reps):
        x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d))
        unbiased.append(mmd2_unbiased(x, y))
        biased.append(polynomial_kernel(x, x).mean() + polynomial_kernel(y, y).mean()
                      - 2 * polynomial_kernel(x, y).mean())
    se = np.std(unbiased) / np.sqrt(reps)
    assert abs(np.mean(unbiased)) < 3 * se, (np.mean(unbiased), se)
    assert np.mean(biased) > 10 * se


def test_kid_near_zero_for_disjoint_halves_and_positive_for_noise(digits, extractor, real_features):
    perm = np.random.default_rng(0).permutation(len(real_features))
    a, b = real_features[perm[:898]], real_features[perm[898:]]
    mean, std = kid_from_features(a, b, subsets=50, subset_size=400)
    assert abs(mean) < 2 * std, (mean, std)
    noisy = compute_features(extractor, noised(digits[0][perm[:898]], 0.2))
    mean_n, std_n = kid_from_features(noisy, b, subsets=50, subset_size=400)
    assert mean_n > 5 * std_n and mean_n > 10 * abs(mean), (mean_n, std_n, mean)
    with pytest.raises(ValueError, match="subset_size 1000 is larger than the first set \\(898 images\\)"):
        kid_from_features(a, b, subsets=2, subset_size=1000)


# ---------------------------------------------------------------------- end to end
def test_evaluate_generation_from_image_folders(tmp_path, digits):
    x = digits[0]
    for name, imgs in (("gen", noised(x[:300], 0.1, seed=1)), ("ref", x[300:700])):
        (tmp_path / name).mkdir()
        for i, im in enumerate(imgs):
            Image.fromarray((im[0].numpy() * 255).round().astype(np.uint8)).save(tmp_path / name / f"{i:04d}.png")
    ref = load_image_folder(tmp_path / "ref", channels=1)
    assert ref.shape == (400, 1, 16, 16) and (ref - x[300:700]).abs().max() <= 0.5 / 255 + 1e-6
    assert load_image_folder(tmp_path / "ref", channels=3, size=8).shape == (400, 3, 8, 8)
    out = evaluate_generation(tmp_path / "gen", tmp_path / "ref", "digits", kid_subsets=10)
    assert out["n_samples"] == 300 and out["n_reference"] == 400 and out["feature_dim"] == 64
    clean = evaluate_generation(x[:300], ref, "digits", kid_subsets=10)
    assert 0 < clean["fid"] < out["fid"] and clean["kid_mean"] < out["kid_mean"]
    assert set(out) == {"fid", "kid_mean", "kid_std", "n_samples", "n_reference", "feature_dim"}
