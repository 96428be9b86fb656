// A float32 matrix product for XLA:CPU by oneDNN's GEMM, one XLA FFI handler:
//   OnednnMatmul(a, b) -> c = op(a) op(b)
// a, b and c are 2-D row-major float32; op transposes its operand when the
// attribute transpose_a / transpose_b is true, so a (K, M) with
// transpose_a gives op(a) = (M, K). The dense layers of the transformers use
// it for their forward product and both gradients (cifar_jax/cpu_matmul.py).
//
// Why: at ViT-Ti's shapes (8320 tokens x 192 -> 768 at batch 128) oneDNN's
// GEMM runs ~1.3x faster than XLA:CPU's dot on two AVX2 cores, and it reads
// a transposed operand in place where XLA first copies the activations and
// gradients of every weight gradient into the transposed layout.
#include <cstdint>
#include <string>

#include "oneapi/dnnl/dnnl.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error Matmul(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> c,
                  bool transpose_a, bool transpose_b) {
  if (a.element_type() != ffi::DataType::F32 || b.element_type() != ffi::DataType::F32 ||
      c->element_type() != ffi::DataType::F32) {
    return ffi::Error::InvalidArgument("oneDNN matmul: operands must be float32");
  }
  auto ad = a.dimensions(), bd = b.dimensions(), cd = c->dimensions();
  if (ad.size() != 2 || bd.size() != 2 || cd.size() != 2) {
    return ffi::Error::InvalidArgument("oneDNN matmul: operands must be 2-D");
  }
  const int64_t m = transpose_a ? ad[1] : ad[0], k = transpose_a ? ad[0] : ad[1];
  const int64_t kb = transpose_b ? bd[1] : bd[0], n = transpose_b ? bd[0] : bd[1];
  if (k != kb || cd[0] != m || cd[1] != n) {
    return ffi::Error::InvalidArgument("oneDNN matmul: the shapes do not multiply");
  }
  const dnnl_status_t status = dnnl_sgemm(
      transpose_a ? 'T' : 'N', transpose_b ? 'T' : 'N', m, n, k, 1.0f,
      static_cast<const float*>(a.untyped_data()), ad[1],
      static_cast<const float*>(b.untyped_data()), bd[1], 0.0f,
      static_cast<float*>(c->untyped_data()), n);
  if (status != dnnl_success) {
    return ffi::Error(ffi::ErrorCode::kInternal,
                      "oneDNN matmul: dnnl_sgemm failed with status " + std::to_string(status));
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("transpose_a")
                                  .Attr<bool>("transpose_b"));
