// Multi-head attention for XLA:CPU: oneDNN's GEMM per (batch entry, head),
// run in parallel over all of them, and oneDNN's softmax. Two XLA FFI handlers:
//   OnednnAttentionForward(qkv, bias) -> (out, probs)
//   OnednnAttentionBackward(qkv, probs, dout) -> (dqkv, dbias)
// qkv is (B, N, 3, H, D), the fused projection as ViT and Swin compute it
// (queries, keys, values of H heads of width D for N tokens), out and dout are
// (B, N, H, D), so neither side needs a transpose; probs (B, H, N, N, float32)
// are the attention weights, kept for the backward pass. bias (nb, H, N, N,
// float32) is added to the logits of batch entry b from bias[b % nb] (Swin's
// relative-position bias and shifted-window mask); nb = 0 means no bias, and
// dbias is then empty. Attribute: scale, the logits' factor (D ** -0.5).
// qkv, out, dout and dqkv are all float32 or all bfloat16; bfloat16 tiles are
// widened to float32, so every product, the softmax and its gradient are
// float32 on every CPU.
//
// Why: XLA:CPU runs the attention's many small batched products (e.g. 384
// products of 65x64 matrices for ViT-Ti at batch 128) about 1.8x slower than
// PyTorch's bmm, and transposes qkv to and from the heads-major layout its
// batched dot needs. Here each (b, h) pair is one independent task reading its
// rows in place through the GEMM's leading dimension.
#include <omp.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

inline float Bf16ToF32(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint16_t F32ToBf16(float f) {  // round to nearest even, as XLA converts
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// Shapes of one call; element (b, n, t, h, d) of qkv is at
// ((b * N + n) * 3 + t) * H * D + h * D + d.
struct Shape {
  int64_t b, n, h, d, nb;
  bool bf16;
  int64_t Hd() const { return h * d; }
  int64_t QkvRow() const { return 3 * h * d; }
  int64_t QkvOffset(int64_t bi, int64_t t, int64_t hi) const {
    return bi * n * QkvRow() + t * Hd() + hi * d;
  }
  int64_t OutOffset(int64_t bi, int64_t hi) const { return bi * n * Hd() + hi * d; }
  int64_t Square() const { return n * n; }
};

// Grow-only float32 buffers of the calling thread (one per `slot`): tile
// copies for bfloat16 operands on the worker threads, the score gradients on
// the thread XLA calls from.
float* ThreadFloats(int slot, size_t count) {
  thread_local std::vector<float> buffers[6];
  std::vector<float>& buffer = buffers[slot];
  if (buffer.size() < count) buffer.resize(count);
  return buffer.data();
}

// A float32 view of an N x D tile whose rows are `ld` elements apart at
// `base + offset`: the tile itself for float32, a widened copy for bfloat16.
struct Tile {
  const float* data;
  int64_t ld;
};

Tile Read(const void* base, const Shape& s, int64_t offset, int64_t ld, int slot) {
  if (!s.bf16) return {static_cast<const float*>(base) + offset, ld};
  float* copy = ThreadFloats(slot, s.n * s.d);
  const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
  for (int64_t r = 0; r < s.n; ++r) {
    for (int64_t c = 0; c < s.d; ++c) copy[r * s.d + c] = Bf16ToF32(src[r * ld + c]);
  }
  return {copy, s.d};
}

// Where a GEMM writes an N x D result tile bound for `base + offset` (rows
// `ld` apart): in place for float32, a float32 scratch tile for bfloat16
// that `Write` then narrows into place.
struct OutTile {
  float* data;
  int64_t ld;
};

OutTile Target(void* base, const Shape& s, int64_t offset, int64_t ld, int slot) {
  if (!s.bf16) return {static_cast<float*>(base) + offset, ld};
  return {ThreadFloats(slot, s.n * s.d), s.d};
}

void Write(const OutTile& tile, void* base, const Shape& s, int64_t offset, int64_t ld) {
  if (!s.bf16) return;
  uint16_t* dst = static_cast<uint16_t*>(base) + offset;
  for (int64_t r = 0; r < s.n; ++r) {
    for (int64_t c = 0; c < s.d; ++c) dst[r * ld + c] = F32ToBf16(tile.data[r * s.d + c]);
  }
}

// dnnl_sgemm is row-major: C = alpha * op(A) op(B) + beta * C. Called inside
// the parallel loop, it runs on the calling thread alone.
bool Gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  return dnnl_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) == dnnl_success;
}

// The softmax over the last axis of a (rows, n) float32 matrix, in place;
// one primitive per shape, created once.
void Softmax(float* data, int64_t rows, int64_t n) {
  static std::mutex mutex;
  static std::unordered_map<std::string, std::shared_ptr<dnnl::softmax_forward>> primitives;
  const dnnl::memory::desc desc({rows, n}, dnnl::memory::data_type::f32,
                                dnnl::memory::format_tag::ab);
  std::shared_ptr<dnnl::softmax_forward> softmax;
  {
    const std::string key = std::to_string(rows) + "," + std::to_string(n);
    std::lock_guard<std::mutex> lock(mutex);
    auto& cached = primitives[key];
    if (cached == nullptr) {
      dnnl::softmax_forward::primitive_desc pd(Engine(), dnnl::prop_kind::forward_inference,
                                               dnnl::algorithm::softmax_accurate, desc, desc, 1);
      cached = std::make_shared<dnnl::softmax_forward>(pd);
    }
    softmax = cached;
  }
  dnnl::stream stream(Engine());
  dnnl::memory memory(desc, Engine(), data);
  softmax->execute(stream, {{DNNL_ARG_SRC, memory}, {DNNL_ARG_DST, memory}});
  stream.wait();
}

ffi::ErrorOr<Shape> MakeShape(const ffi::AnyBuffer& qkv, const ffi::AnyBuffer& bias) {
  const ffi::DataType type = qkv.element_type();
  if (type != ffi::DataType::F32 && type != ffi::DataType::BF16) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "oneDNN attention: qkv must be float32 or bfloat16"));
  }
  auto q = qkv.dimensions(), p = bias.dimensions();
  if (q.size() != 5 || q[2] != 3) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "oneDNN attention: qkv must be (batch, tokens, 3, heads, head_dim)"));
  }
  Shape s{q[0], q[1], q[3], q[4], p.size() == 4 ? p[0] : -1, type == ffi::DataType::BF16};
  if (bias.element_type() != ffi::DataType::F32 || s.nb < 0 || p[1] != s.h || p[2] != s.n ||
      p[3] != s.n || (s.nb > 0 && s.b % s.nb != 0)) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "oneDNN attention: bias must be float32 (nb, heads, tokens, tokens) with nb "
        "dividing the batch (nb = 0: no bias)"));
  }
  return s;
}

ffi::Error Failed(const char* what) {
  return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN attention: ") + what);
}

ffi::Error Forward(ffi::AnyBuffer qkv, ffi::AnyBuffer bias, ffi::Result<ffi::AnyBuffer> out,
                   ffi::Result<ffi::AnyBuffer> probs_result, float scale) {
  auto shape = MakeShape(qkv, bias);
  if (shape.has_error()) return shape.error();
  const Shape s = *shape;
  if (probs_result->element_type() != ffi::DataType::F32 ||
      probs_result->element_count() != static_cast<size_t>(s.b * s.h * s.Square()) ||
      out->element_type() != qkv.element_type() ||
      out->element_count() != static_cast<size_t>(s.b * s.n * s.Hd())) {
    return ffi::Error::InvalidArgument("oneDNN attention: out or probs do not match qkv's shape");
  }
  const void* x = qkv.untyped_data();
  const float* bias_data = bias.typed_data<float>();
  float* probs = static_cast<float*>(probs_result->untyped_data());
  void* y = out->untyped_data();
  const int64_t units = s.b * s.h, nn = s.Square();
  std::atomic<bool> ok{true};
  // Logits: scale * Q K^T (+ bias), into probs.
#pragma omp parallel for schedule(static)
  for (int64_t u = 0; u < units; ++u) {
    const int64_t bi = u / s.h, hi = u % s.h;
    const Tile q = Read(x, s, s.QkvOffset(bi, 0, hi), s.QkvRow(), 0);
    const Tile k = Read(x, s, s.QkvOffset(bi, 1, hi), s.QkvRow(), 1);
    float* logits = probs + u * nn;
    float beta = 0.0f;
    if (s.nb > 0) {
      std::memcpy(logits, bias_data + ((bi % s.nb) * s.h + hi) * nn, nn * sizeof(float));
      beta = 1.0f;
    }
    if (!Gemm('N', 'T', s.n, s.n, s.d, scale, q.data, q.ld, k.data, k.ld, beta, logits, s.n)) {
      ok = false;
    }
  }
  if (!ok) return Failed("the logits' GEMM failed");
  try {
    Softmax(probs, units * s.n, s.n);
  } catch (const dnnl::error& e) {
    return Failed(e.what());
  }
  // out = P V, written in (B, N, H, D).
#pragma omp parallel for schedule(static)
  for (int64_t u = 0; u < units; ++u) {
    const int64_t bi = u / s.h, hi = u % s.h;
    const Tile v = Read(x, s, s.QkvOffset(bi, 2, hi), s.QkvRow(), 0);
    const OutTile o = Target(y, s, s.OutOffset(bi, hi), s.Hd(), 1);
    if (!Gemm('N', 'N', s.n, s.d, s.n, 1.0f, probs + u * nn, s.n, v.data, v.ld, 0.0f, o.data,
              o.ld)) {
      ok = false;
    }
    Write(o, y, s, s.OutOffset(bi, hi), s.Hd());
  }
  if (!ok) return Failed("the values' GEMM failed");
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::AnyBuffer qkv, ffi::AnyBuffer probs_buffer, ffi::AnyBuffer dout,
                    ffi::Result<ffi::AnyBuffer> dqkv, ffi::Result<ffi::AnyBuffer> dbias,
                    float scale) {
  auto shape = MakeShape(qkv, *dbias);
  if (shape.has_error()) return shape.error();
  const Shape s = *shape;
  if (dout.element_type() != qkv.element_type() || dqkv->element_type() != qkv.element_type()) {
    return ffi::Error::InvalidArgument("oneDNN attention: qkv, dout and dqkv differ in dtype");
  }
  if (probs_buffer.element_type() != ffi::DataType::F32 ||
      probs_buffer.element_count() != static_cast<size_t>(s.b * s.h * s.Square()) ||
      dout.element_count() != static_cast<size_t>(s.b * s.n * s.Hd()) ||
      dqkv->element_count() != qkv.element_count()) {
    return ffi::Error::InvalidArgument(
        "oneDNN attention: probs, dout or dqkv do not match qkv's shape");
  }
  const void* x = qkv.untyped_data();
  const void* dy = dout.untyped_data();
  const float* probs = static_cast<const float*>(probs_buffer.untyped_data());
  void* dx = dqkv->untyped_data();
  const int64_t units = s.b * s.h, nn = s.Square();
  // With a bias, the score gradients of all units are kept, to be summed into
  // dbias below; without, each worker reuses one tile.
  float* all_scores = s.nb > 0 ? ThreadFloats(5, units * nn) : nullptr;
  std::atomic<bool> ok{true};
#pragma omp parallel for schedule(static)
  for (int64_t u = 0; u < units; ++u) {
    const int64_t bi = u / s.h, hi = u % s.h;
    const float* p = probs + u * nn;
    const Tile g = Read(dy, s, s.OutOffset(bi, hi), s.Hd(), 0);
    const Tile v = Read(x, s, s.QkvOffset(bi, 2, hi), s.QkvRow(), 1);
    float* ds = all_scores != nullptr ? all_scores + u * nn : ThreadFloats(2, nn);
    bool good = true;
    // dV = P^T dO
    OutTile t = Target(dx, s, s.QkvOffset(bi, 2, hi), s.QkvRow(), 3);
    good &= Gemm('T', 'N', s.n, s.d, s.n, 1.0f, p, s.n, g.data, g.ld, 0.0f, t.data, t.ld);
    Write(t, dx, s, s.QkvOffset(bi, 2, hi), s.QkvRow());
    // dP = dO V^T, then the softmax's gradient dS = P * (dP - rowsum(P * dP)).
    good &= Gemm('N', 'T', s.n, s.n, s.d, 1.0f, g.data, g.ld, v.data, v.ld, 0.0f, ds, s.n);
    for (int64_t r = 0; r < s.n; ++r) {
      const float* pr = p + r * s.n;
      float* dr = ds + r * s.n;
      float dot = 0.0f;
      for (int64_t c = 0; c < s.n; ++c) dot += pr[c] * dr[c];
      for (int64_t c = 0; c < s.n; ++c) dr[c] = pr[c] * (dr[c] - dot);
    }
    // dQ = scale * dS K, dK = scale * dS^T Q
    const Tile k = Read(x, s, s.QkvOffset(bi, 1, hi), s.QkvRow(), 1);
    t = Target(dx, s, s.QkvOffset(bi, 0, hi), s.QkvRow(), 3);
    good &= Gemm('N', 'N', s.n, s.d, s.n, scale, ds, s.n, k.data, k.ld, 0.0f, t.data, t.ld);
    Write(t, dx, s, s.QkvOffset(bi, 0, hi), s.QkvRow());
    const Tile q = Read(x, s, s.QkvOffset(bi, 0, hi), s.QkvRow(), 1);
    t = Target(dx, s, s.QkvOffset(bi, 1, hi), s.QkvRow(), 3);
    good &= Gemm('T', 'N', s.n, s.d, s.n, scale, ds, s.n, q.data, q.ld, 0.0f, t.data, t.ld);
    Write(t, dx, s, s.QkvOffset(bi, 1, hi), s.QkvRow());
    if (!good) ok = false;
  }
  if (!ok) return Failed("a gradient GEMM failed");
  if (s.nb > 0) {
    // dbias[j, h] = sum over the batch entries b with b % nb == j of dS[b, h]:
    // entry (j, h, r) of dbias sums all_scores at every (nb * H * N * N)-th place.
    float* db = static_cast<float*>(dbias->untyped_data());
    const int64_t size = s.nb * s.h * nn, repeats = s.b / s.nb;
#pragma omp parallel for schedule(static)
    for (int64_t e = 0; e < size; ++e) {
      float sum = 0.0f;
      for (int64_t i = 0; i < repeats; ++i) sum += all_scores[i * size + e];
      db[e] = sum;
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<float>("scale"));
