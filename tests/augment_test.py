"""Tests for cifar_jax.augment: parsing, known answers per op, jit and sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cifar_jax import augment

B = 8


def _images(b=B, seed=0):
  return jnp.asarray(np.random.default_rng(seed).random((b, 32, 32, 3), dtype=np.float32))


def _targets(b=B):
  return jax.nn.one_hot(jnp.arange(b) % 10, 10)


_COMPILED = {}


def _run(spec, images, targets=None, seed=0):
  """Runs ``spec`` under jit; one jitted function per spec, so tests that use
  the same spec on the same shapes share a compilation."""
  targets = _targets(images.shape[0]) if targets is None else targets
  if spec not in _COMPILED:
    _COMPILED[spec] = jax.jit(augment.build(spec))
  return _COMPILED[spec](jax.random.key(seed), images, targets)


def _shift(images, dy, dx):
  """NumPy reference: translate by whole pixels with zero fill."""
  images = np.asarray(images)
  h, w = images.shape[-3:-1]
  out = np.zeros_like(images)
  out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0), :] = images[
    ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0), :
  ]
  return out


def _img(spec, images, seed=0):
  return np.asarray(_run(spec, images, seed=seed)[0])


# ---- parsing -------------------------------------------------------------------


def test_parse_plain_and_nested():
  assert augment.parse("crop(pad=4, mode='reflect')|flip| cutout(size=8)") == [
    ("crop", {"pad": 4, "mode": "reflect"}),
    ("flip", {}),
    ("cutout", {"size": 8}),
  ]
  assert augment.parse("") == []
  ops = augment.parse(
    "random_apply(p=0.3, op='crop(pad=2)|flip')|"
    "random_choice(ops=[\"rotate(degrees=(0, 180))\", 'invert'])"
  )
  assert ops == [
    ("random_apply", {"p": 0.3, "op": "crop(pad=2)|flip"}),
    ("random_choice", {"ops": ["rotate(degrees=(0, 180))", "invert"]}),
  ]
  heavy = augment.parse(augment.HEAVY_SPEC)
  assert [name for name, _ in heavy] == ["crop", "random_choice"]
  assert len(heavy[1][1]["ops"]) == 7


@pytest.mark.parametrize(
  "spec, message",
  [
    ("crop|nope", "Unknown augmentation 'nope'"),
    ("crop(pad=", "Bad augmentation op"),
    ("crop(4)", "Bad augmentation op"),
    ("crop(pad=x)", "Bad augmentation op"),
    ("crop(size=4)", "Bad arguments for augmentation 'crop'"),
    ("random_apply(op='flip|nope')", "Unknown augmentation 'nope'"),
    ("random_choice(ops=['flip', 3])", "must hold spec strings"),
  ],
)
def test_parse_errors(spec, message):
  with pytest.raises(ValueError, match=message):
    augment.parse(spec)


@pytest.mark.parametrize(
  "spec",
  [
    "flip(p=1.5)",
    "crop(mode='wrap')",
    "cutout(size=0)",
    "rotate(degrees=(10, 0))",
    "affine(scale=(0, 1))",
    "perspective(distortion_scale=2)",
    "posterize(bits=9)",
    "randaugment(m=31)",
    "random_choice(ops=[])",
    "random_choice(ops=['flip'], weights=[1, 2])",
    "jitter(hue=0.7)",
  ],
)
def test_build_rejects_bad_values(spec):
  with pytest.raises(ValueError):
    augment.build(spec)


def test_op_names():
  expected = {
    "crop",
    "flip",
    "cutout",
    "mixup",
    "cutmix",
    "jitter",
    "rotate",
    "affine",
    "perspective",
    "elastic",
    "solarize",
    "invert",
    "autocontrast",
    "equalize",
    "posterize",
    "randaugment",
    "random_apply",
    "random_choice",
    "identity",
  }
  assert set(augment.OP_NAMES) == expected


# ---- every op: jit, shape, dtype, range ------------------------------------------

ALL_OPS = {
  "crop": "crop(pad=4, mode='reflect')",
  "flip": "flip",
  "cutout": "cutout(size=8)",
  "mixup": "mixup(alpha=1.0)",
  "cutmix": "cutmix(alpha=1.0)",
  "jitter": "jitter",
  "rotate": "rotate(degrees=45)",
  "affine": "affine(degrees=20, shear=10)",
  "perspective": "perspective(distortion_scale=0.6, p=1.0)",
  "elastic": "elastic(alpha=250.0, sigma=10.0)",
  "solarize": "solarize(threshold=192)",
  "invert": "invert",
  "autocontrast": "autocontrast",
  "equalize": "equalize",
  "posterize": "posterize(bits=3)",
  "randaugment": "randaugment(n=2, m=9)",
  "random_apply": "random_apply(p=0.5, op='rotate|invert')",
  "random_choice": "random_choice(p=0.8, ops=['invert', 'flip(p=1.0)'], weights=[1, 3])",
  "identity": "identity",
}


def test_all_ops_listed():
  assert set(ALL_OPS) == set(augment.OP_NAMES)


@pytest.mark.parametrize("name", sorted(ALL_OPS))
def test_op_jits_and_keeps_shape_dtype_range(name):
  images = _images()
  out, targets = _run(ALL_OPS[name], images)
  assert out.shape == images.shape and out.dtype == jnp.float32
  assert targets.shape == (B, 10) and targets.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out))) and float(out.min()) >= 0 and float(out.max()) <= 1
  np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)


# ---- known answers ------------------------------------------------------------


def test_flip():
  x = _images()
  np.testing.assert_array_equal(_img("flip(p=0.0)", x), x)
  np.testing.assert_array_equal(_img("flip(p=1.0)", x), x[:, :, ::-1])
  np.testing.assert_array_equal(_img("flip(p=1.0)|flip(p=1.0)", x), x)


def test_crop():
  x = _images()
  np.testing.assert_array_equal(_img("crop(pad=0)", x), x)
  out = _img("crop(pad=4)", jnp.ones((B, 32, 32, 3)))
  pad = 4
  ones = np.ones((32, 32, 3), np.float32)
  for image in out:  # ones shifted by some (dy, dx), zeros in the uncovered strip
    shifts = [
      (dy, dx)
      for dy in range(-pad, pad + 1)
      for dx in range(-pad, pad + 1)
      if np.array_equal(image, _shift(ones, dy, dx))
    ]
    assert len(shifts) == 1
  reflect = _img("crop(pad=4, mode='reflect')", jnp.full((B, 32, 32, 3), 0.25))
  np.testing.assert_array_equal(reflect, 0.25)


def test_cutout():
  ones = jnp.ones((B, 32, 32, 3))
  inside = _img("cutout(size=8, inside=True)", ones)
  zeros = (inside == 0).all(axis=-1)
  assert (zeros.sum(axis=(1, 2)) == 64).all()
  for mask in zeros:  # an 8x8 square
    rows, cols = np.nonzero(mask)
    assert rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7
  clipped = (_img("cutout(size=8)", ones, seed=1) == 0).all(axis=-1).sum(axis=(1, 2))
  assert (clipped <= 64).all() and (clipped >= 16).all()
  np.testing.assert_array_equal(_img("cutout(size=8, fill=0.5, inside=True)", ones).min(), 0.5)


def _distinct_constant_batch():
  values = jnp.linspace(0.05, 0.95, B)
  return values, jnp.broadcast_to(values[:, None, None, None], (B, 32, 32, 3)), _targets()


def test_mixup_targets_and_images_are_convex_combinations():
  values, images, targets = _distinct_constant_batch()
  out, mixed = _run("mixup(alpha=1.0)", images, targets)
  np.testing.assert_allclose(mixed.sum(axis=1), 1.0, atol=1e-6)
  assert float(mixed.min()) >= 0
  # Labels are distinct, so the targets name the weights of the two images.
  expected = mixed[:, :B] @ values
  np.testing.assert_allclose(
    out, jnp.broadcast_to(expected[:, None, None, None], out.shape), atol=1e-5
  )
  assert int(((mixed > 0).sum(axis=1) == 2).sum()) >= B // 2  # most are mixed


def test_cutmix_target_fraction_equals_pasted_area():
  values, images, targets = _distinct_constant_batch()
  out, mixed = _run("cutmix(alpha=1.0)", images, targets, seed=3)
  np.testing.assert_allclose(mixed.sum(axis=1), 1.0, atol=1e-6)
  out = np.asarray(out[..., 0])
  for i in range(B):
    for k in range(B):
      fraction = np.isclose(out[i], float(values[k])).mean()
      np.testing.assert_allclose(float(mixed[i, k]), fraction, atol=1e-6)
  assert ((np.asarray(mixed) > 0).sum(axis=1) == 2).any()


def test_rotate_known_angles():
  x = _images()
  np.testing.assert_array_equal(_img("rotate(degrees=0)", x), x)
  np.testing.assert_allclose(_img("rotate(degrees=(180, 180))", x), x[:, ::-1, ::-1], atol=1e-4)
  np.testing.assert_allclose(
    _img("rotate(degrees=(90, 90))", x), np.rot90(x, 1, axes=(1, 2)), atol=1e-4
  )  # counter-clockwise


def test_rotate_draws_per_example_angles():
  same = jnp.broadcast_to(_images(1), (B, 32, 32, 3))
  out = _img("rotate(degrees=180)", same)
  assert len({out[i].tobytes() for i in range(B)}) == B


def test_affine():
  x = _images()
  np.testing.assert_array_equal(_img("affine(translate=(0, 0), scale=(1, 1))", x), x)
  out = _img("affine(translate=(0.1, 0.1), scale=(1, 1))", x)  # whole-pixel shifts
  for image, source in zip(out, x):
    assert any(
      np.allclose(image, _shift(source, dy, dx), atol=1e-6)
      for dy in range(-3, 4)
      for dx in range(-3, 4)
    )
  half = _img("affine(scale=(0.5, 0.5), translate=(0, 0))", jnp.ones((B, 32, 32, 3)))
  assert (half[:, :7] == 0).all() and (half[:, 10:22, 10:22] == 1).all()


def test_perspective_identity_cases():
  x = _images()
  np.testing.assert_allclose(_img("perspective(distortion_scale=0.0, p=1.0)", x), x, atol=1e-5)
  np.testing.assert_array_equal(_img("perspective(distortion_scale=0.8, p=0.0)", x), x)
  out = _img("perspective(distortion_scale=0.6, p=1.0)", jnp.ones((B, 32, 32, 3)))
  assert (out[:, 15:17, 15:17] > 0.99).all() and (out.min(axis=(1, 2, 3)) == 0).all()


def test_perspective_maps_moved_corners_to_image_corners():
  moved = jnp.asarray(
    [[[3, 2], [28, 5], [30, 29], [1, 25]], [[0, 0], [31, 0], [31, 31], [0, 31]]], jnp.float32
  )
  to_image = jnp.diag(jnp.asarray([31.0, 31.0, 1.0]))
  matrices = to_image @ augment._adjugate(augment._square_to_quad(moved))
  points = jnp.einsum("bij,bkj->bki", matrices, jnp.concatenate([moved, jnp.ones((2, 4, 1))], -1))
  corners = np.array([[0, 0], [31, 0], [31, 31], [0, 31]])
  np.testing.assert_allclose(points[..., :2] / points[..., 2:], np.stack([corners] * 2), atol=1e-4)


def test_elastic():
  x = _images()
  np.testing.assert_array_equal(_img("elastic(alpha=0.0)", x), x)
  np.testing.assert_allclose(_img("elastic(alpha=0.001, sigma=10.0)", x), x, atol=1e-3)
  assert np.abs(_img("elastic(alpha=250.0, sigma=10.0)", x) - x).mean() > 0.05


def test_elastic_blur_matrix_matches_reflect_padded_convolution():
  sigma, n = 2.0, 12
  matrix = augment._blur_matrix(n, sigma)
  size = int(8 * sigma + 1) | 1
  kernel = np.exp(-0.5 * (np.arange(-(size // 2), size // 2 + 1) / sigma) ** 2)
  signal = np.random.default_rng(0).random(n)
  padded = np.pad(signal, size // 2, mode="reflect")
  expected = np.convolve(padded, kernel / kernel.sum(), mode="valid")
  np.testing.assert_allclose(matrix @ signal, expected, atol=1e-6)
  np.testing.assert_allclose(augment._blur_matrix(32, 10.0).sum(axis=1), 1.0, atol=1e-5)


def test_solarize_and_invert():
  x = _images()
  np.testing.assert_array_equal(_img("solarize(threshold=0)", x), 1 - x)
  np.testing.assert_array_equal(_img("solarize(threshold=256)", x), x)
  np.testing.assert_array_equal(
    _img("solarize(threshold=192)", x), np.where(x >= 192 / 255, 1 - x, x)
  )
  np.testing.assert_array_equal(_img("invert", x), 1 - x)
  np.testing.assert_allclose(_img("invert|invert", x), x, atol=1e-7)


def test_jitter():
  x = _images()
  np.testing.assert_array_equal(_img("jitter(brightness=0, contrast=0, saturation=0, hue=0)", x), x)
  np.testing.assert_allclose(
    _img("jitter(brightness=(0.5, 0.5), contrast=0, saturation=0, hue=0)", x), x * 0.5, atol=1e-7
  )
  gray = _img("jitter(brightness=0, contrast=0, saturation=(0, 0), hue=0)", x)
  np.testing.assert_allclose(gray, np.repeat(gray[..., :1], 3, axis=-1), atol=1e-6)
  # Contrast 0 leaves the mean grey level (pure function, no compile).
  flat = np.asarray(augment._contrast(x, jnp.zeros((B,))))
  np.testing.assert_allclose(flat, flat[:, :1, :1].repeat(32, 1).repeat(32, 2), atol=1e-6)
  np.testing.assert_allclose(
    flat[:, 0, 0, 0],
    np.asarray(x @ jnp.asarray([0.299, 0.587, 0.114])).mean(axis=(1, 2)),
    atol=1e-6,
  )
  # A hue shift of 1/3 turns pure red into pure green.
  red = jnp.zeros((B, 32, 32, 3)).at[..., 0].set(1.0)
  np.testing.assert_allclose(
    _img("jitter(brightness=0, contrast=0, saturation=0, hue=(0.33333334, 0.33333334))", red),
    np.asarray(red)[..., [2, 0, 1]],
    atol=1e-5,
  )


def test_pixel_ops_match_pil():
  image = pytest.importorskip("PIL.Image")
  ops = pytest.importorskip("PIL.ImageOps")
  u8 = (np.random.default_rng(1).random((4, 32, 32, 3)) ** 2 * 255).astype(np.uint8)
  u8[1, ..., 2] = 7  # a flat channel: equalize and autocontrast leave it alone
  x = jnp.asarray(u8, jnp.float32) / 255
  for spec, pil in [
    ("equalize", ops.equalize),
    ("autocontrast", ops.autocontrast),
    ("posterize(bits=3)", lambda im: ops.posterize(im, 3)),
    ("solarize(threshold=100)", lambda im: ops.solarize(im, 100)),
  ]:
    expected = np.stack([np.asarray(pil(image.fromarray(im))) for im in u8]) / 255
    # PIL rounds autocontrast's lookup table; the rest match exactly.
    np.testing.assert_allclose(_img(spec, x), expected, atol=1.01 / 255, err_msg=spec)


def test_random_apply():
  x = _images()
  np.testing.assert_array_equal(_img("random_apply(p=0.0, op='invert')", x), x)
  np.testing.assert_array_equal(_img("random_apply(p=1.0, op='invert')", x), 1 - x)
  # Targets are selected along with images (label mixing inside random_apply
  # is also run in test_sharded_batch_on_four_devices).
  flips = np.asarray(_run("random_apply(p=0.5, op='flip(p=1.0)')", x)[0])
  flipped = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flips, np.asarray(x))]
  kept = [np.array_equal(f, i) for f, i in zip(flips, np.asarray(x))]
  assert all(a != b for a, b in zip(flipped, kept)) and 0 < sum(flipped) < B


def test_random_choice_distributes():
  n = 1024
  x = jnp.full((n, 32, 32, 3), 0.2)
  spec = (
    "random_choice(p=0.5, ops=['invert', "
    "'jitter(brightness=(0.5, 0.5), contrast=0, saturation=0, hue=0)'])"
  )
  first = _img(spec, x)[:, 0, 0, 0]
  fractions = [np.isclose(first, v).mean() for v in (0.8, 0.1, 0.2)]
  np.testing.assert_allclose(fractions, [0.25, 0.25, 0.5], atol=0.06)
  weighted = _img("random_choice(ops=['invert', 'identity'], weights=[3, 1])", x)[:, 0, 0, 0]
  np.testing.assert_allclose(np.isclose(weighted, 0.8).mean(), 0.75, atol=0.06)
  with pytest.raises(ValueError):
    augment.build("random_choice(ops=[])")


def test_randaugment():
  x = _images()
  a, _ = _run("randaugment(n=2, m=9)", x)
  b, _ = _run("randaugment(n=2, m=9)", x)
  c, _ = _run("randaugment(n=2, m=9)", x, seed=1)
  assert a.shape == x.shape and bool(jnp.all(jnp.isfinite(a)))
  assert float(a.min()) >= 0 and float(a.max()) <= 1
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  np.testing.assert_array_equal(_img("randaugment(n=0)", x), x)


def test_heavy_spec_runs_under_jit():
  x = _images()
  out, targets = _run(augment.HEAVY_SPEC, x)
  assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
  np.testing.assert_array_equal(targets, _targets())
  changed = np.abs(np.asarray(out) - _img("crop(pad=5)", x)).reshape(B, -1).max(axis=1)
  assert 0 < (changed > 0).sum()


def test_sharded_batch_on_four_devices():
  assert jax.device_count() >= 4, "tests/conftest.py forces 4 CPU devices"
  mesh = jax.make_mesh((4,), ("data",))  # Explicit axes by default
  sharding = NamedSharding(mesh, P("data"))
  x, t = _images(), _targets()
  xs, ts = jax.device_put(x, sharding), jax.device_put(t, sharding)
  # Same numbers as on one device.
  out, targets = jax.jit(augment.build(augment.HEAVY_SPEC))(jax.random.key(0), xs, ts)
  assert out.sharding.spec[0] == "data"
  ref_out, ref_targets = _run(augment.HEAVY_SPEC, x)
  np.testing.assert_allclose(out, ref_out, atol=1e-6)
  np.testing.assert_allclose(targets, ref_targets, atol=1e-6)
  # Label mixing (cross-device partners) and RandAugment (histograms, lookups).
  spec = "randaugment(n=2, m=9)|cutmix(alpha=1.0)|random_apply(p=0.5, op='mixup(alpha=1.0)')"
  out, targets = jax.jit(augment.build(spec))(jax.random.key(0), xs, ts)
  assert out.sharding.spec[0] == "data" and targets.sharding.spec[0] == "data"
  assert float(out.min()) >= 0 and float(out.max()) <= 1
  np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
  assert int((targets > 0).sum()) > B


def test_tta_views():
  x = _images()
  (view,) = augment.tta_views(x, "none")
  np.testing.assert_array_equal(view, x)
  views = augment.tta_views(x, "flip")
  assert len(views) == 2
  np.testing.assert_array_equal(views[1], x[:, :, ::-1])
  views = augment.tta_views(x, "flip_translate")
  assert len(views) == 10 and all(v.shape == x.shape for v in views)
  x = np.asarray(x)
  right = np.asarray(views[2])  # shifted right by 2, the border reflected
  np.testing.assert_array_equal(right[:, :, 2:], x[:, :, :-2])
  np.testing.assert_array_equal(right[:, :, :2], x[:, :, 2:0:-1])
  up = np.asarray(views[5])  # shifted up by 2
  np.testing.assert_array_equal(up[:, :-2], x[:, 2:])
  np.testing.assert_array_equal(up[:, -2:], x[:, -2:-4:-1])
  np.testing.assert_array_equal(np.asarray(views[6])[:, :, 2:], x[:, :, ::-1][:, :, :-2])
  # Every view is a rearrangement of the image's own pixels: no fill value.
  for view in views:
    assert set(np.unique(np.asarray(view))) <= set(np.unique(x))
  with pytest.raises(ValueError, match="Unknown TTA mode"):
    augment.tta_views(x, "five_crop")
