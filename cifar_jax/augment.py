"""Batched, seeded data augmentation as jnp functions that run inside jit.

A pipeline is written as a spec string of ops joined by ``|``, each op a name
with optional Python-literal keyword arguments, for example::

    "crop(pad=4)|flip"
    "crop(pad=4, mode='reflect')|flip|cutout(size=8)"
    "crop(pad=4)|flip|random_apply(p=0.8, op='jitter(brightness=0.4)')"
    "crop(pad=4)|flip|randaugment(n=2, m=9)|mixup(alpha=0.2)"

``build(spec)`` returns ``augment(rng, images, targets) -> (images, targets)``
where ``images`` is a float32 NHWC batch in [0, 1] (before mean/std
normalisation) and ``targets`` the one-hot (or soft) labels, so label-mixing
ops (mixup, cutmix) share the interface. Everything is vectorised over the
batch, with static shapes, seeded only by ``rng``, and every example draws its
own random parameters. The batch may be sharded over a device mesh on its
first axis, including meshes with ``Explicit`` axes (the ``jax.make_mesh``
default): per-example parameters are laid out like the batch before use.

Ops and their keyword arguments (defaults shown; see each factory's docstring):

=================  ===========================================================
crop               pad=4, mode='zero' | 'reflect'
flip               p=0.5
cutout             size=8, fill=0.0, inside=False
mixup              alpha=1.0
cutmix             alpha=1.0
jitter             brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1
rotate             degrees=30.0 (d -> U(-d, d) or (lo, hi)), fill=0.0
affine             degrees=0.0, translate=(0.1, 0.1), scale=(0.9, 1.1),
                   shear=0.0, fill=0.0
perspective        distortion_scale=0.5, p=0.5, fill=0.0
elastic            alpha=50.0, sigma=5.0, fill=0.0
solarize           threshold=128.0 (0..255 scale)
invert             (none)
autocontrast       (none)
equalize           (none)
posterize          bits=4
randaugment        n=2, m=9, num_bins=31, fill=0.0
random_apply       p=0.5, op='<spec>'
random_choice      p=1.0, ops=['<spec>', ...], weights=None
identity           (none)
=================  ===========================================================

``OP_NAMES`` lists the registered names. ``HEAVY_SPEC`` is the heavy pipeline
of the seed recipe (pad 5 + crop, then with p=0.5 one of colour jitter,
rotation in [0, 180], affine, perspective, elastic, solarize, invert) with
the parameters of torchvision's transforms gallery where the recipe names
none (jitter brightness 0.5 / hue 0.3, perspective distortion 0.6).
``tta_views`` gives the views for test-time augmentation.

Parameters follow torchvision (and PIL for the pixel ops, which the tests
check against PIL) except: jitter applies its adjustments in a fixed order,
perspective moves corners by continuous rather than whole-pixel offsets,
equalize/posterize work on 8-bit levels (outputs are multiples of 1/255).
Wrappers (``random_apply``, ``random_choice``, RandAugment) compute every
candidate for the whole batch and select per example, so they cost the sum
of their candidates.

Geometric ops (rotate, affine, perspective, elastic and RandAugment's
rotate/shear/translate) share one bilinear sampler: each builds per-example
3x3 matrices mapping output pixel coordinates to input coordinates (or a
displacement field), and ``warp``/``sample_bilinear`` does the rest, filling
outside the input with ``fill``.
"""

from __future__ import annotations

import ast
import inspect
from typing import Callable
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

Augment = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
_OPS: dict[str, Callable[..., Augment]] = {}
# kwargs of an op that hold nested spec strings (or lists of them); `parse`
# checks those recursively so that a bad nested op fails as early as the rest.
_NESTED: dict[str, tuple[str, ...]] = {}


def op(name: str, nested: Sequence[str] = ()):
  """Registers a factory ``f(**kwargs) -> Augment`` under ``name``.

  ``nested`` names the keyword arguments that hold nested spec strings.
  """

  def deco(factory):
    _OPS[name] = factory
    _NESTED[name] = tuple(nested)
    return factory

  return deco


def image_op(fn):
  """Lifts ``fn(rng, images) -> images`` to the (images, targets) interface."""

  def augment(rng, images, targets):
    return fn(rng, images), targets

  return augment


# ---------------------------------------------------------------------------
# Helpers: per-example parameters, sharding, colour.
# ---------------------------------------------------------------------------


def _batch_spec(x):
  """The mesh axis the leading (batch) axis of ``x`` is explicitly sharded on."""
  try:
    sharding = jax.typeof(x).sharding
    spec = sharding.spec
  except Exception:  # pylint: disable=broad-except  (no sharding info, e.g. pmap)
    return None, None
  if not spec or spec[0] is None:
    return None, None
  return sharding.mesh, spec[0]


def _like_batch(x, ref):
  """Lays out per-example ``x`` (leading batch axis) like the batch ``ref``.

  Needed under meshes with Explicit axes, where vmap and gathers insist that
  the mapped axes of all operands be sharded the same. A no-op otherwise.
  """
  mesh, axis = _batch_spec(ref)
  if axis is None:
    return x
  spec = P(axis, *([None] * (x.ndim - 1)))
  return jax.sharding.reshard(x, NamedSharding(mesh, spec))


def _take_batch(x, index):
  """``x[index]`` along the batch axis, keeping the batch sharding of ``x``."""
  mesh, axis = _batch_spec(x)
  if axis is None:
    return x[index]
  return x.at[index].get(out_sharding=NamedSharding(mesh, P(axis)))


def _range(value, name: str, center: float = 0.0, lower: float | None = None):
  """A number v means (center - v, center + v); a pair means itself."""
  if isinstance(value, (tuple, list)):
    if len(value) != 2:
      raise ValueError(f"{name} must be a number or a (min, max) pair, not {value!r}")
    lo, hi = float(value[0]), float(value[1])
  else:
    if value < 0:
      raise ValueError(f"{name} must be non-negative, not {value!r}")
    lo, hi = center - float(value), center + float(value)
  if lower is not None:
    lo = max(lo, lower)
  if lo > hi:
    raise ValueError(f"{name} range {value!r} is empty")
  return lo, hi


def _check_p(p, name: str):
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"{name} probability p must lie in [0, 1], not {p!r}")


def _uniform(rng, batch: int, bounds: tuple[float, float]):
  """Per-example U(lo, hi) draws, shape (batch,)."""
  lo, hi = bounds
  return jax.random.uniform(rng, (batch,), jnp.float32, lo, hi)


def _grayscale(images):
  """ITU-R 601-2 luma, (B, H, W, 1), as torchvision/PIL."""
  # Explicit channel slices: a reduction over the size-3 minor axis fuses
  # badly on XLA:CPU (~20x slower).
  return 0.299 * images[..., 0:1] + 0.587 * images[..., 1:2] + 0.114 * images[..., 2:3]


def _blend(a, b, factor):
  """``factor * a + (1 - factor) * b`` clipped to [0, 1]; factor (B,) or scalar."""
  factor = jnp.reshape(factor, jnp.shape(factor) + (1,) * (a.ndim - jnp.ndim(factor)))
  return jnp.clip(b + factor * (a - b), 0.0, 1.0)


def rgb_to_hsv(images):
  """RGB in [0, 1] -> HSV with hue in [0, 1)."""
  return jnp.stack(_rgb_to_hsv(images), axis=-1)


def hsv_to_rgb(hsv):
  """Inverse of ``rgb_to_hsv``."""
  return _hsv_to_rgb(hsv[..., 0], hsv[..., 1], hsv[..., 2])


def _rgb_to_hsv(images):
  r, g, b = images[..., 0], images[..., 1], images[..., 2]
  maxc = jnp.maximum(jnp.maximum(r, g), b)
  minc = jnp.minimum(jnp.minimum(r, g), b)
  chroma = maxc - minc
  gray = chroma == 0
  s = chroma / jnp.where(gray, 1.0, maxc)
  safe = jnp.where(gray, 1.0, chroma)
  rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
  h = jnp.where(maxc == r, bc - gc, jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
  h = jnp.where(gray, 0.0, jnp.mod(h / 6.0, 1.0))
  return h, s, maxc


def _hsv_to_rgb(h, s, v):
  h6 = jnp.mod(h, 1.0) * 6.0
  sector = jnp.floor(h6)
  f = h6 - sector
  sector = sector.astype(jnp.int32) % 6
  p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)

  def pick(*values):
    return jnp.select([sector == i for i in range(5)], values[:5], values[5])

  return jnp.stack(
    [pick(v, q, p, p, t, v), pick(t, v, v, q, p, p), pick(p, p, t, v, v, q)], axis=-1
  )


def _materialize(rng, images):
  """``images``, computed into a buffer of its own; the result is unchanged.

  XLA:CPU otherwise fuses chains of ops into the gathers that consume them
  (crop -> warp -> warp ...), recomputing the whole chain for every gathered
  element: up to ~10x slower pipelines. ``optimization_barrier`` does not
  stop that on CPU, but a conditional does. Its predicate is always true
  (``bits | 1 != 0``), so even if a compiler folds it the result is
  ``images``; the other branch exists only so that it is not simplified away.
  """
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  bits = jnp.asarray(rng).reshape(-1)[0]
  return jax.lax.cond((bits | 1) != 0, lambda x: x, lambda x: x * 0.0, images)


def _to_uint8(images):
  """[0, 1] floats -> int32 levels 0..255 (round to nearest)."""
  return jnp.round(jnp.clip(images, 0.0, 1.0) * 255.0).astype(jnp.int32)


# ---------------------------------------------------------------------------
# Geometry: one bilinear sampler for every warp.
# ---------------------------------------------------------------------------


def sample_bilinear(images, x, y, fill: float = 0.0):
  """Samples ``images`` (B, H, W, C) at pixel coordinates ``x``, ``y`` (B, h, w).

  Pixel centres are at integer coordinates; each of the four neighbours that
  falls outside the image contributes ``fill`` (like grid_sample with zero
  padding when fill is 0). Integer coordinates reproduce pixels exactly.
  """
  b, height, width, c = images.shape
  out_shape = x.shape
  x = _like_batch(x.reshape(b, -1), images)
  y = _like_batch(y.reshape(b, -1), images)
  x0, y0 = jnp.floor(x), jnp.floor(y)
  wx, wy = x - x0, y - y0
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  flat = images.reshape(b, height * width, c)
  out = jnp.zeros((b, x.shape[1], c), images.dtype)
  outside = jnp.zeros_like(x)
  # One gather per neighbour: stacking the four into one gather and reducing
  # over them is ~40x slower on XLA:CPU.
  for dx, dy, weight in (
    (0, 0, (1 - wx) * (1 - wy)),
    (1, 0, wx * (1 - wy)),
    (0, 1, (1 - wx) * wy),
    (1, 1, wx * wy),
  ):
    xi, yi = x0 + dx, y0 + dy
    inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
    index = jnp.clip(yi, 0, height - 1) * width + jnp.clip(xi, 0, width - 1)
    values = jax.vmap(lambda f, i: f[i])(flat, index)
    out = out + values * jnp.where(inside, weight, 0.0)[..., None]
    if fill:
      outside = outside + jnp.where(inside, 0.0, weight)
  if fill:
    out = out + fill * outside[..., None]
  return jnp.clip(out.reshape(*out_shape, c), 0.0, 1.0)


def _pixel_grid(height: int, width: int):
  ys, xs = np.meshgrid(
    np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij"
  )
  return jnp.asarray(xs), jnp.asarray(ys)


def warp(images, matrices, fill: float = 0.0):
  """Warps each image by its 3x3 homography ``matrices`` (B, 3, 3).

  ``matrices[i]`` maps homogeneous output pixel coordinates (x, y, 1) to input
  coordinates; use ``_about_center`` to build them in centred coordinates.
  """
  _, height, width, _ = images.shape
  xs, ys = _pixel_grid(height, width)
  m = _like_batch(matrices, images)
  m = m[:, :, None, None, :]  # (B, 3, 1, 1, 3)
  u = m[:, :, ..., 0] * xs + m[:, :, ..., 1] * ys + m[:, :, ..., 2]
  denom = u[:, 2]
  denom = jnp.where(jnp.abs(denom) < 1e-8, 1e-8, denom)
  return sample_bilinear(images, u[:, 0] / denom, u[:, 1] / denom, fill)


def _about_center(matrices, height: int, width: int):
  """Conjugates centred-coordinate matrices into pixel coordinates."""
  cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
  to_pixels = jnp.asarray([[1, 0, cx], [0, 1, cy], [0, 0, 1]], jnp.float32)
  to_center = jnp.asarray([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], jnp.float32)
  return to_pixels @ matrices @ to_center


def _inverse_affine(angle, scale, shear_x, shear_y, tx, ty):
  """Output->input matrices (B, 3, 3), centred coordinates, of the forward map

      q = R(angle) @ Shear(shear_x, shear_y) @ (scale * p) + (tx, ty)

  with ``angle`` in radians, counter-clockwise on screen (y points down) like
  torchvision, and shears as coefficients (x' = x + shear_x * y).
  """
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  # Forward linear part A = R @ Sh * scale; R = [[cos, sin], [-sin, cos]].
  a00 = (cos + sin * shear_y) * scale
  a01 = (cos * shear_x + sin) * scale
  a10 = (-sin + cos * shear_y) * scale
  a11 = (-sin * shear_x + cos) * scale
  det = a00 * a11 - a01 * a10
  i00, i01, i10, i11 = a11 / det, -a01 / det, -a10 / det, a00 / det
  zero, one = jnp.zeros_like(angle), jnp.ones_like(angle)
  return jnp.stack(
    [
      jnp.stack([i00, i01, -(i00 * tx + i01 * ty)], -1),
      jnp.stack([i10, i11, -(i10 * tx + i11 * ty)], -1),
      jnp.stack([zero, zero, one], -1),
    ],
    -2,
  )


def _affine_warp(
  images, angle=None, scale=None, shear_x=None, shear_y=None, tx=None, ty=None, fill=0.0
):
  b, height, width, _ = images.shape
  zeros = jnp.zeros((b,), jnp.float32)
  pick = lambda v, default: zeros + default if v is None else v
  m = _inverse_affine(
    pick(angle, 0.0),
    pick(scale, 1.0),
    pick(shear_x, 0.0),
    pick(shear_y, 0.0),
    pick(tx, 0.0),
    pick(ty, 0.0),
  )
  return warp(images, _about_center(m, height, width), fill)


def _square_to_quad(quad):
  """Homographies (B, 3, 3) taking the unit square's corners (0, 0), (1, 0),
  (1, 1), (0, 1) to ``quad`` (B, 4, 2) in that order (Heckbert's closed form;
  elementwise, so cheap to compile and run)."""
  x0, x1, x2, x3 = (quad[:, i, 0] for i in range(4))
  y0, y1, y2, y3 = (quad[:, i, 1] for i in range(4))
  dx1, dx2, dx3 = x1 - x2, x3 - x2, x0 - x1 + x2 - x3
  dy1, dy2, dy3 = y1 - y2, y3 - y2, y0 - y1 + y2 - y3
  den = dx1 * dy2 - dx2 * dy1
  g = (dx3 * dy2 - dx2 * dy3) / den
  h = (dx1 * dy3 - dx3 * dy1) / den
  one = jnp.ones_like(g)
  return jnp.stack(
    [
      jnp.stack([x1 - x0 + g * x1, x3 - x0 + h * x3, x0], -1),
      jnp.stack([y1 - y0 + g * y1, y3 - y0 + h * y3, y0], -1),
      jnp.stack([g, h, one], -1),
    ],
    -2,
  )


def _adjugate(m):
  """Adjugate of (B, 3, 3) matrices: the inverse up to a scale, which is all
  a homography needs."""
  c = lambda i, j: m[:, i, j]
  cof = lambda r0, r1, c0, c1: c(r0, c0) * c(r1, c1) - c(r0, c1) * c(r1, c0)
  return jnp.stack(
    [
      jnp.stack([cof(1, 2, 1, 2), -cof(0, 2, 1, 2), cof(0, 1, 1, 2)], -1),
      jnp.stack([-cof(1, 2, 0, 2), cof(0, 2, 0, 2), -cof(0, 1, 0, 2)], -1),
      jnp.stack([cof(1, 2, 0, 1), -cof(0, 2, 0, 1), cof(0, 1, 0, 1)], -1),
    ],
    -2,
  )


def _reflect_index(i: np.ndarray, n: int) -> np.ndarray:
  """'reflect' padding (edge not repeated) for any offset, as np.pad."""
  if n == 1:
    return np.zeros_like(i)
  period = 2 * (n - 1)
  i = np.mod(i, period)
  return np.where(i >= n, period - i, i)


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
  """(n, n) matrix applying torchvision's Gaussian blur (kernel int(8 sigma + 1)
  made odd, reflect padding) along one axis."""
  size = int(8 * sigma + 1)
  size += 1 - size % 2
  half = size // 2
  offsets = np.arange(-half, half + 1)
  kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
  kernel /= kernel.sum()
  matrix = np.zeros((n, n), np.float64)
  for i in range(n):
    np.add.at(matrix[i], _reflect_index(i + offsets, n), kernel)
  return matrix.astype(np.float32)


# ---------------------------------------------------------------------------
# Simple pixel ops (also used by RandAugment).
# ---------------------------------------------------------------------------


def _solarize(images, threshold):
  """Inverts pixels >= ``threshold`` (in [0, 1]; scalar or (B,))."""
  threshold = jnp.reshape(threshold, jnp.shape(threshold) + (1,) * (4 - jnp.ndim(threshold)))
  return jnp.where(images >= threshold, 1.0 - images, images)


def _posterize(images, bits: int):
  """Keeps the top ``bits`` bits of each 8-bit level (PIL/torchvision on uint8)."""
  if bits >= 8:
    return images
  mask = (0xFF << (8 - bits)) & 0xFF
  return (_to_uint8(images) & mask).astype(jnp.float32) / 255.0


def _autocontrast(images):
  """Stretches each channel of each image to span [0, 1]."""
  lo = jnp.min(images, axis=(1, 2), keepdims=True)
  hi = jnp.max(images, axis=(1, 2), keepdims=True)
  flat = hi <= lo
  scale = 1.0 / jnp.where(flat, 1.0, hi - lo)
  lo = jnp.where(flat, 0.0, lo)
  return jnp.clip((images - lo) * scale, 0.0, 1.0)


def _equalize(images):
  """Histogram equalisation per image and channel on 8-bit levels.

  Exactly PIL's ``ImageOps.equalize`` (and torchvision's) after quantising to
  8 bits: 256-bin histogram, ``step = (N - count of the top level) // 255``,
  ``lut = (cumsum_before + step // 2) // step``; a channel with ``step == 0``
  is left unchanged. The output is quantised to multiples of 1/255.
  """
  b, height, width, c = images.shape
  n = height * width
  levels = _to_uint8(images).reshape(b, n, c).transpose(0, 2, 1)  # (B, C, N)
  hist = jax.vmap(jax.vmap(lambda v: jnp.bincount(v, length=256)))(levels)
  top = jnp.max(levels, axis=-1, keepdims=True)
  step = (n - jnp.sum(levels == top, axis=-1, dtype=jnp.int32)) // 255  # (B, C)
  safe = jnp.maximum(step, 1)[..., None]
  before = jnp.cumsum(hist, axis=-1) - hist  # exclusive cumsum
  lut = jnp.clip((before + safe // 2) // safe, 0, 255)  # (B, C, 256)
  lut = jnp.where((step == 0)[..., None], jnp.arange(256), lut)
  out = jnp.take_along_axis(lut, levels, axis=-1)
  return out.transpose(0, 2, 1).reshape(b, height, width, c).astype(jnp.float32) / 255.0


def _sharpness(images, factor):
  """PIL ImageEnhance.Sharpness / torchvision adjust_sharpness; factor (B,).

  Blends with the image smoothed by [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13,
  border pixels left as they are.
  """
  _, height, width, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
  total = sum(padded[:, dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3))
  smooth = (total + 4.0 * images) / 13.0
  rows = jnp.arange(height)[:, None, None]
  cols = jnp.arange(width)[None, :, None]
  interior = (rows > 0) & (rows < height - 1) & (cols > 0) & (cols < width - 1)
  return _blend(images, jnp.where(interior, smooth, images), factor)


def _contrast(images, factor):
  mean = _grayscale(jnp.mean(images, axis=(1, 2), keepdims=True))
  return _blend(images, mean, factor)


def _saturation(images, factor):
  return _blend(images, _grayscale(images), factor)


def _brightness(images, factor):
  return _blend(images, jnp.zeros_like(images), factor)


def _shift(images, dy: int, dx: int):
  """Translates by whole pixels (static), filling with zeros."""
  if dy == 0 and dx == 0:
    return images
  _, height, width, _ = images.shape
  pad = ((0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)), (0, 0))
  padded = jnp.pad(images, pad)
  y0, x0 = max(-dy, 0), max(-dx, 0)
  return padded[:, y0 : y0 + height, x0 : x0 + width]


# ---------------------------------------------------------------------------
# Ops.
# ---------------------------------------------------------------------------


@op("crop")
def random_crop(pad: int = 4, mode: str = "zero") -> Augment:
  """Pads each side by ``pad`` pixels (zeros or reflection) and takes a random
  crop of the input size, at an offset drawn per example."""
  modes = {"zero": "constant", "reflect": "reflect"}
  if mode not in modes:
    raise ValueError(f"crop mode must be one of {sorted(modes)}, not {mode!r}")
  if pad < 0:
    raise ValueError(f"crop pad must be >= 0, not {pad}")

  def crop(rng, images):
    if pad == 0:
      return images
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=modes[mode])
    offsets = _like_batch(jax.random.randint(rng, (b, 2), 0, 2 * pad + 1), images)
    return jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(
      padded, offsets
    )

  return image_op(crop)


@op("flip")
def random_flip(p: float = 0.5) -> Augment:
  """Mirrors each image left-right with probability ``p``."""
  _check_p(p, "flip")

  def flip(rng, images):
    do = jax.random.bernoulli(rng, p, (images.shape[0], 1, 1, 1))
    return jnp.where(do, images[:, :, ::-1, :], images)

  return image_op(flip)


@op("cutout")
def cutout(size: int = 8, fill: float = 0.0, inside: bool = False) -> Augment:
  """Sets a ``size`` x ``size`` square per example to ``fill``.

  The centre is uniform over the image and the square is clipped at the
  border (DeVries & Taylor), so up to size**2 pixels change; with
  ``inside=True`` the square always lies inside and exactly size**2 change.
  Note images are not yet normalised: fill 0 is black, not the mean.
  """
  if size < 1:
    raise ValueError(f"cutout size must be >= 1, not {size}")

  def cut(rng, images):
    b, height, width, _ = images.shape
    if inside and size > min(height, width):
      raise ValueError(f"cutout size {size} does not fit inside {height}x{width} images")
    ky, kx = jax.random.split(rng)
    if inside:
      top = jax.random.randint(ky, (b,), 0, height - size + 1)
      left = jax.random.randint(kx, (b,), 0, width - size + 1)
    else:
      top = jax.random.randint(ky, (b,), 0, height) - size // 2
      left = jax.random.randint(kx, (b,), 0, width) - size // 2
    rows = jnp.arange(height)[None, :, None]
    cols = jnp.arange(width)[None, None, :]
    mask = (
      (rows >= top[:, None, None])
      & (rows < (top + size)[:, None, None])
      & (cols >= left[:, None, None])
      & (cols < (left + size)[:, None, None])
    )
    return jnp.where(mask[..., None], jnp.asarray(fill, images.dtype), images)

  return image_op(cut)


def _symmetric_beta(rng, alpha: float, batch: int):
  """Beta(alpha, alpha) draws as G1 / (G1 + G2), in log space so that small
  alphas cannot underflow, with one Gamma call (compiles faster than
  jax.random.beta, which makes two)."""
  log_g = jax.random.loggamma(rng, alpha, (2, batch))
  return jax.nn.sigmoid(log_g[0] - log_g[1])


def _partners(rng, images, targets):
  perm = jax.random.permutation(rng, images.shape[0])
  return _take_batch(images, perm), _take_batch(targets, perm)


@op("mixup")
def mixup(alpha: float = 1.0) -> Augment:
  """Mixes each example with a random partner of the batch (a permutation):
  ``lam * x + (1 - lam) * x_partner``, the same for targets, with
  ``lam ~ Beta(alpha, alpha)`` per example. ``alpha <= 0`` is a no-op."""

  def augment(rng, images, targets):
    if alpha <= 0:
      return images, targets
    k_perm, k_lam = jax.random.split(rng)
    other_images, other_targets = _partners(k_perm, images, targets)
    lam = _symmetric_beta(k_lam, alpha, images.shape[0])
    images = jnp.clip(other_images + lam[:, None, None, None] * (images - other_images), 0, 1)
    targets = other_targets + lam[:, None] * (targets - other_targets)
    return images, targets

  return augment


@op("cutmix")
def cutmix(alpha: float = 1.0) -> Augment:
  """Pastes a box of a random partner into each example. The box has area
  ``(1 - lam) H W`` with ``lam ~ Beta(alpha, alpha)`` per example and a
  uniform centre, clipped at the border; targets mix by the pasted fraction
  actually used. ``alpha <= 0`` is a no-op."""

  def augment(rng, images, targets):
    if alpha <= 0:
      return images, targets
    b, height, width, _ = images.shape
    k_perm, k_lam, k_y, k_x = jax.random.split(rng, 4)
    other_images, other_targets = _partners(k_perm, images, targets)
    lam = _symmetric_beta(k_lam, alpha, b)
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    cy = jax.random.randint(k_y, (b,), 0, height)
    cx = jax.random.randint(k_x, (b,), 0, width)
    y1, y2 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x1, x2 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    rows = jnp.arange(height)[None, :, None]
    cols = jnp.arange(width)[None, None, :]
    mask = (
      (rows >= y1[:, None, None])
      & (rows < y2[:, None, None])
      & (cols >= x1[:, None, None])
      & (cols < x2[:, None, None])
    )
    pasted = ((y2 - y1) * (x2 - x1)).astype(jnp.float32) / (height * width)
    images = jnp.where(mask[..., None], other_images, images)
    targets = targets + pasted[:, None] * (other_targets - targets)
    return images, targets

  return augment


@op("jitter")
def color_jitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1) -> Augment:
  """torchvision ColorJitter with per-example factors.

  ``brightness``/``contrast``/``saturation``: v -> factor ~ U(max(0, 1 - v),
  1 + v), or an explicit (min, max); ``hue``: h -> shift ~ U(-h, h) with
  h <= 0.5, or (min, max). Zero strength skips that adjustment. Unlike
  torchvision the order is fixed (brightness, contrast, saturation, hue)
  rather than random, which keeps the op one vectorised pass.
  """

  def factor_range(value, name):
    if not isinstance(value, (tuple, list)) and value == 0:
      return None
    return _range(value, name, center=1.0, lower=0.0)

  ranges = {
    name: factor_range(value, name)
    for name, value in (
      ("brightness", brightness),
      ("contrast", contrast),
      ("saturation", saturation),
    )
  }
  hue_range = None
  if isinstance(hue, (tuple, list)) or hue != 0:
    hue_range = _range(hue, "hue")
    if not -0.5 <= hue_range[0] <= hue_range[1] <= 0.5:
      raise ValueError(f"hue must lie in [-0.5, 0.5], not {hue!r}")
  adjust = {"brightness": _brightness, "contrast": _contrast, "saturation": _saturation}

  def fn(rng, images):
    b = images.shape[0]
    keys = jax.random.split(rng, 4)
    for key, name in zip(keys, ("brightness", "contrast", "saturation")):
      if ranges[name] is not None:
        images = adjust[name](images, _uniform(key, b, ranges[name]))
    if hue_range is not None:
      shift = _uniform(keys[3], b, hue_range)[:, None, None]
      h, s, v = _rgb_to_hsv(images)
      images = jnp.clip(_hsv_to_rgb(h + shift, s, v), 0.0, 1.0)
    return images

  return image_op(fn)


@op("rotate")
def random_rotation(degrees=30.0, fill: float = 0.0) -> Augment:
  """Rotates each image about its centre by an angle ~ U(-d, d) for a number
  d, or U(lo, hi) for a pair (degrees, counter-clockwise), bilinear."""
  bounds = _range(degrees, "degrees")

  def fn(rng, images):
    angle = jnp.deg2rad(_uniform(rng, images.shape[0], bounds))
    return _affine_warp(images, angle=angle, fill=fill)

  return image_op(fn)


@op("affine")
def random_affine(
  degrees=0.0, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=0.0, fill: float = 0.0
) -> Augment:
  """torchvision RandomAffine with per-example parameters, bilinear.

  ``degrees``: rotation ~ U(-d, d) or U(lo, hi). ``translate=(a, b)``: maximum
  fractions of the width and height; shifts ~ U(-a W, a W), U(-b H, b H)
  rounded to whole pixels. ``scale=(lo, hi)``: zoom ~ U(lo, hi). ``shear``:
  x-shear angle in degrees ~ U(-s, s) or U(lo, hi).
  """
  rot = _range(degrees, "degrees")
  shear_range = _range(shear, "shear")
  if len(translate) != 2 or not all(0.0 <= t <= 1.0 for t in translate):
    raise ValueError(f"translate must be two fractions in [0, 1], not {translate!r}")
  if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
    raise ValueError(f"scale must be (min, max) with 0 < min <= max, not {scale!r}")

  def fn(rng, images):
    b, height, width, _ = images.shape
    k_rot, k_scale, k_shear, k_tx, k_ty = jax.random.split(rng, 5)
    max_dx, max_dy = translate[0] * width, translate[1] * height
    return _affine_warp(
      images,
      angle=jnp.deg2rad(_uniform(k_rot, b, rot)),
      scale=_uniform(k_scale, b, (float(scale[0]), float(scale[1]))),
      shear_x=jnp.tan(jnp.deg2rad(_uniform(k_shear, b, shear_range))),
      tx=jnp.round(_uniform(k_tx, b, (-max_dx, max_dx))),
      ty=jnp.round(_uniform(k_ty, b, (-max_dy, max_dy))),
      fill=fill,
    )

  return image_op(fn)


@op("perspective")
def random_perspective(distortion_scale: float = 0.5, p: float = 0.5, fill: float = 0.0) -> Augment:
  """torchvision RandomPerspective: with probability ``p`` per example, each
  corner moves inwards by up to ``distortion_scale`` times half the width and
  height (continuous offsets); the image is warped by the homography taking
  the moved corners back to the original ones."""
  if not 0.0 <= distortion_scale <= 1.0:
    raise ValueError(f"distortion_scale must lie in [0, 1], not {distortion_scale}")
  _check_p(p, "perspective")

  def fn(rng, images):
    b, height, width, _ = images.shape
    k_apply, k_offsets = jax.random.split(rng)
    corners = jnp.asarray(
      [[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], jnp.float32
    )
    inward = jnp.asarray([[1, 1], [-1, 1], [-1, -1], [1, -1]], jnp.float32)
    reach = distortion_scale * jnp.asarray([width / 2, height / 2], jnp.float32)
    offsets = jax.random.uniform(k_offsets, (b, 4, 2)) * reach
    apply = jax.random.bernoulli(k_apply, p, (b, 1, 1))
    moved = corners + jnp.where(apply, offsets, 0.0) * inward
    # Output pixel -> unit square (inverse of square -> moved corners) ->
    # input pixel (scale the square to the image's corners).
    to_image = jnp.asarray([[width - 1, 0, 0], [0, height - 1, 0], [0, 0, 1]], jnp.float32)
    matrices = to_image @ _adjugate(_square_to_quad(moved))
    return warp(images, matrices, fill)

  return image_op(fn)


@op("elastic")
def elastic(alpha: float = 50.0, sigma: float = 5.0, fill: float = 0.0) -> Augment:
  """torchvision ElasticTransform: per-example displacement fields of U(-1, 1)
  noise, Gaussian-blurred with ``sigma`` (kernel int(8 sigma + 1), reflect
  padding), scaled to ``alpha / 2`` pixels (torchvision's ``alpha / size`` in
  grid units), then bilinear sampling."""
  if alpha < 0 or sigma < 0:
    raise ValueError(f"elastic alpha and sigma must be >= 0, not {alpha}, {sigma}")

  def fn(rng, images):
    if alpha == 0:
      return images
    b, height, width, _ = images.shape
    noise = jax.random.uniform(rng, (b, 2, height, width), jnp.float32, -1.0, 1.0)
    if sigma > 0:
      blur_h = jnp.asarray(_blur_matrix(height, sigma))
      blur_w = jnp.asarray(_blur_matrix(width, sigma))
      noise = jnp.einsum("ij,bdjk,lk->bdil", blur_h, noise, blur_w)
    xs, ys = _pixel_grid(height, width)
    return sample_bilinear(
      images, xs + noise[:, 0] * (alpha / 2), ys + noise[:, 1] * (alpha / 2), fill
    )

  return image_op(fn)


@op("solarize")
def solarize(threshold: float = 128.0) -> Augment:
  """Inverts pixels >= ``threshold`` given on the 0..255 scale (192 means
  192/255); 0 inverts everything, anything above 255 is the identity."""

  def fn(rng, images):
    del rng
    return _solarize(images, threshold / 255.0)

  return image_op(fn)


@op("invert")
def invert() -> Augment:
  """``1 - x``."""
  return image_op(lambda rng, images: 1.0 - images)


@op("autocontrast")
def autocontrast() -> Augment:
  """Stretches each channel of each image to [0, 1] (no cutoff)."""
  return image_op(lambda rng, images: _autocontrast(images))


@op("equalize")
def equalize() -> Augment:
  """Histogram equalisation per image and channel (PIL's algorithm on 8-bit
  levels; output quantised to multiples of 1/255)."""
  return image_op(lambda rng, images: _equalize(images))


@op("posterize")
def posterize(bits: int = 4) -> Augment:
  """Keeps the top ``bits`` (1..8) bits of each 8-bit level."""
  if not 1 <= bits <= 8:
    raise ValueError(f"posterize bits must be in 1..8, not {bits}")
  return image_op(lambda rng, images: _posterize(images, bits))


# RandAugment's op list (torchvision order). The geometric ones are applied by
# one shared warp; the others are pixel ops on the whole batch.
RANDAUGMENT_OPS = (
  "identity",
  "shear_x",
  "shear_y",
  "translate_x",
  "translate_y",
  "rotate",
  "brightness",
  "color",
  "contrast",
  "sharpness",
  "posterize",
  "solarize",
  "autocontrast",
  "equalize",
)


@op("randaugment")
def randaugment(n: int = 2, m: int = 9, num_bins: int = 31, fill: float = 0.0) -> Augment:
  """RandAugment (Cubuk et al.) like torchvision's, vectorised per example.

  Applies ``n`` layers; in each, every example draws one of RANDAUGMENT_OPS
  uniformly and a random sign for signed ops. Magnitude ``m`` is a bin in
  [0, num_bins - 1]; with f = m / (num_bins - 1): shear +-0.3 f, translate
  +-(150/331) f W pixels (rounded), rotate +-30 f degrees, brightness / color /
  contrast / sharpness factor 1 +- 0.9 f, posterize 8 - round(4 f) bits,
  solarize threshold 1 - f, autocontrast, equalize (exact PIL algorithm on
  8-bit levels), identity. Shears are about the image centre. All candidate
  pixel ops are computed for the whole batch and selected per example (one
  warp covers every geometric candidate), so the cost is about nine pixel
  ops plus one bilinear warp per layer.
  """
  if not 0 <= m < num_bins:
    raise ValueError(f"randaugment m must be in [0, {num_bins - 1}], not {m}")
  if n < 0:
    raise ValueError(f"randaugment n must be >= 0, not {n}")
  f = m / (num_bins - 1) if num_bins > 1 else 0.0
  bits = int(8 - round(4 * f))
  index = {name: i for i, name in enumerate(RANDAUGMENT_OPS)}

  def layer(rng, images):
    b, height, width, _ = images.shape
    k_op, k_sign = jax.random.split(rng)
    choice = jax.random.randint(k_op, (b,), 0, len(RANDAUGMENT_OPS))
    sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (b,)), -1.0, 1.0)
    is_op = lambda name: choice == index[name]
    zero = jnp.zeros((b,), jnp.float32)
    # One warp for all geometric candidates; identity (exact) for the rest.
    warped = _affine_warp(
      images,
      angle=jnp.where(is_op("rotate"), jnp.deg2rad(30.0 * f) * sign, zero),
      shear_x=jnp.where(is_op("shear_x"), 0.3 * f * sign, zero),
      shear_y=jnp.where(is_op("shear_y"), 0.3 * f * sign, zero),
      tx=jnp.where(is_op("translate_x"), round(150 / 331 * width * f) * sign, zero),
      ty=jnp.where(is_op("translate_y"), round(150 / 331 * height * f) * sign, zero),
      fill=fill,
    )
    factor = 1.0 + 0.9 * f * sign
    candidates = {
      "brightness": lambda: _brightness(images, factor),
      "color": lambda: _saturation(images, factor),
      "contrast": lambda: _contrast(images, factor),
      "sharpness": lambda: _sharpness(images, factor),
      "posterize": lambda: _posterize(images, bits),
      "solarize": lambda: _solarize(images, 1.0 - f),
      "autocontrast": lambda: _autocontrast(images),
      "equalize": lambda: _equalize(images),
    }
    out = warped
    for name, compute in candidates.items():
      out = jnp.where(is_op(name)[:, None, None, None], compute(), out)
    return out

  def fn(rng, images):
    for i in range(n):
      images = layer(jax.random.fold_in(rng, i), images)
    return images

  return image_op(fn)


@op("random_apply", nested=("op",))
def random_apply(p: float = 0.5, op: str = "identity") -> Augment:  # pylint: disable=redefined-outer-name
  """Applies the pipeline ``op`` (a spec string) to each example with
  probability ``p``; images and targets of the others pass through. The op
  runs on the whole batch and the results are selected per example."""
  _check_p(p, "random_apply")
  inner = build(op)

  def augment(rng, images, targets):
    k_apply, k_op = jax.random.split(rng)
    new_images, new_targets = inner(k_op, images, targets)
    new_images = _materialize(k_op, new_images)
    do = jax.random.bernoulli(k_apply, p, (images.shape[0],))
    return (
      jnp.where(do[:, None, None, None], new_images, images),
      jnp.where(do[:, None], new_targets, targets),
    )

  return augment


@op("random_choice", nested=("ops",))
def random_choice(p: float = 1.0, ops: Sequence[str] = (), weights=None) -> Augment:
  """With probability ``p`` per example applies ONE of the pipelines ``ops``
  (spec strings), chosen per example uniformly or by ``weights``. Every
  candidate runs on the whole batch and results are selected per example, so
  the cost is the sum of the candidates."""
  if isinstance(ops, str) or not ops:
    raise ValueError(f"random_choice needs a non-empty list of spec strings, not {ops!r}")
  _check_p(p, "random_choice")
  fns = [build(spec) for spec in ops]
  if weights is not None:
    if len(weights) != len(ops) or min(weights) < 0 or sum(weights) <= 0:
      raise ValueError(f"random_choice weights {weights!r} do not fit ops {ops!r}")
    logits = np.log(np.maximum(np.asarray(weights, np.float64) / sum(weights), 1e-30))
  else:
    logits = np.zeros(len(ops))

  def augment(rng, images, targets):
    b = images.shape[0]
    k_apply, k_choice, k_ops = jax.random.split(rng, 3)
    choice = jax.random.categorical(k_choice, jnp.asarray(logits, jnp.float32), shape=(b,))
    choice = jnp.where(jax.random.bernoulli(k_apply, p, (b,)), choice, -1)
    out_images, out_targets = images, targets
    for i, fn in enumerate(fns):
      key = jax.random.fold_in(k_ops, i)
      new_images, new_targets = fn(key, images, targets)
      new_images = _materialize(key, new_images)
      pick = choice == i
      out_images = jnp.where(pick[:, None, None, None], new_images, out_images)
      out_targets = jnp.where(pick[:, None], new_targets, out_targets)
    return out_images, out_targets

  return augment


@op("identity")
def identity() -> Augment:
  """Leaves images and targets unchanged."""
  return lambda rng, images, targets: (images, targets)


# ---------------------------------------------------------------------------
# Spec strings.
# ---------------------------------------------------------------------------


def _split_top_level(spec: str) -> list[str]:
  """Splits on ``|`` outside brackets and string literals."""
  parts, depth, quote, start, i = [], 0, None, 0, 0
  while i < len(spec):
    ch = spec[i]
    if quote:
      if ch == "\\":
        i += 1
      elif ch == quote:
        quote = None
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "|" and depth == 0:
      parts.append(spec[start:i])
      start = i + 1
    i += 1
  parts.append(spec[start:])
  return parts


def parse(spec: str) -> list[tuple[str, dict]]:
  """Parses ``"name(k=v, ...)|name"`` into ``[(name, kwargs), ...]``.

  Values are Python literals; nested spec strings (``random_apply``'s ``op``,
  ``random_choice``'s ``ops``) may contain ``|`` and are checked recursively.
  Raises ValueError on bad syntax, unknown ops or unknown keyword arguments.
  """
  if not isinstance(spec, str):
    raise ValueError(f"augmentation spec must be a string, not {spec!r}")
  ops = []
  for part in (p.strip() for p in _split_top_level(spec)):
    if not part:
      continue
    try:
      call = ast.parse(part, mode="eval").body
      if isinstance(call, ast.Name):
        name, kwargs = call.id, {}
      elif isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and not call.args:
        name = call.func.id
        if any(k.arg is None for k in call.keywords):
          raise ValueError("** arguments are not allowed")
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
      else:
        raise ValueError("expected name or name(key=value, ...)")
    except (SyntaxError, ValueError) as e:
      raise ValueError(f"Bad augmentation op {part!r} in {spec!r}: {e}") from None
    if name not in _OPS:
      raise ValueError(f"Unknown augmentation {name!r} in {spec!r}; available: {sorted(_OPS)}")
    try:
      inspect.signature(_OPS[name]).bind(**kwargs)
    except TypeError as e:
      params = list(inspect.signature(_OPS[name]).parameters)
      raise ValueError(
        f"Bad arguments for augmentation {name!r} in {spec!r}: {e}; it takes {params}"
      ) from None
    for key in _NESTED[name]:
      if key in kwargs:
        nested = kwargs[key]
        if isinstance(nested, str):
          nested = [nested]
        elif not isinstance(nested, (list, tuple)):
          raise ValueError(f"{name}({key}=...) in {spec!r} must hold spec strings, not {nested!r}")
        for sub in nested:
          if not isinstance(sub, str):
            raise ValueError(f"{name}({key}=...) in {spec!r} must hold spec strings, not {sub!r}")
          parse(sub)
    ops.append((name, kwargs))
  return ops


def build(spec: str) -> Augment:
  """Compiles a spec string into one augmentation function."""
  fns = [_OPS[name](**kwargs) for name, kwargs in parse(spec)]

  def augment(rng, images, targets):
    for i, fn in enumerate(fns):
      key = jax.random.fold_in(rng, i)
      images, targets = fn(key, images, targets)
      if i + 1 < len(fns):
        images = _materialize(key, images)
    return images, targets

  return augment


# ---------------------------------------------------------------------------
# Test-time augmentation.
# ---------------------------------------------------------------------------

TTA_MODES = ("none", "flip", "flip_translate")


def tta_views(images, mode: str = "flip", shift: int = 2) -> list[jax.Array]:
  """Deterministic views of a batch for test-time augmentation.

  ``"none"`` -> [images]; ``"flip"`` -> [images, left-right flipped];
  ``"flip_translate"`` -> for the image and its flip, the view itself and
  whole-pixel translations by +-``shift`` along x and along y: 10 views, the
  first two being those of ``"flip"``. The translations fill the uncovered
  border by reflection, as airbench's TTA and the reflect crops its networks
  train with: a zero (black) border is an input such a network never saw,
  and on `speedrun` checkpoints it made these views worse than flips alone
  (README, Speed run). Works under jit. Average softmax outputs (or logits)
  over the views.
  """
  if mode not in TTA_MODES:
    raise ValueError(f"Unknown TTA mode {mode!r}; available: {list(TTA_MODES)}")
  if mode == "none":
    return [images]
  flipped = images[:, :, ::-1, :]
  views = [images, flipped]
  if mode == "flip_translate":
    offsets = ((0, shift), (0, -shift), (shift, 0), (-shift, 0))
    views += [_reflect_shift(base, dy, dx) for base in (images, flipped) for dy, dx in offsets]
  return views


def _reflect_shift(images, dy: int, dx: int):
  """Translates by whole pixels (static), filling the border by reflection."""
  pad = max(abs(dy), abs(dx))
  if pad == 0:
    return images
  _, height, width, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
  return padded[:, pad - dy : pad - dy + height, pad - dx : pad - dx + width]


OP_NAMES: tuple[str, ...] = tuple(sorted(_OPS))

HEAVY_SPEC = (
  "crop(pad=5)|random_choice(p=0.5, ops=["
  "'jitter(brightness=0.5, contrast=0.0, saturation=0.0, hue=0.3)', "
  "'rotate(degrees=(0, 180))', "
  "'affine(translate=(0.1, 0.3), scale=(0.5, 0.75))', "
  "'perspective(distortion_scale=0.6, p=1.0)', "
  "'elastic(alpha=250.0)', "
  "'solarize(threshold=192)', "
  "'invert'])"
)
