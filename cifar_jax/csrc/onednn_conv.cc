// oneDNN 2-D convolutions for XLA:CPU, exposed as three XLA FFI handlers.
//
// XLA:CPU runs convolutions, and above all their weight gradients, several
// times slower than oneDNN (the library PyTorch uses on CPUs). The Python side
// (cifar_jax/cpu_conv.py) calls these handlers from a custom VJP:
//   OnednnConvForward(x, w) -> y
//   OnednnConvBackwardData(dy, w) -> dx
//   OnednnConvBackwardWeights(x, dy) -> dw
// Activations are NHWC and kernels HWIO, all float32 or all bfloat16 (which
// oneDNN accumulates in float32), no dilation. A kernel with fewer input
// channels than the activations is grouped (depthwise when it has one):
// groups = input channels / kernel input channels, as XLA's
// feature_group_count.
// Attributes: stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right.
//
// The same module carries the handlers of onednn_attention.cc and
// onednn_matmul.cc (the transformers' attention and dense layers).
//
// The module is also a Python extension (cifar_jax._onednn_conv) whose
// attributes are PyCapsules of the handlers, for jax.ffi.register_ffi_target,
// plus what Python needs to decide before compiling whether these handlers
// can serve a run: `cpu_isa()` (the instruction set oneDNN dispatches to,
// after ONEDNN_MAX_CPU_ISA), `supports(dtype)` (whether the three primitives
// can be created for "f32" or "bf16" on this CPU) and JAXLIB_VERSION (the
// jaxlib whose FFI headers it was compiled against).
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <new>
#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;
using Type = dnnl::memory::data_type;

namespace {

enum class Direction { kForward, kBackwardData, kBackwardWeights };

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Shapes of one convolution. oneDNN describes tensors as NCHW / OIHW whatever
// their memory layout; the layout is given by the format tag.
struct Geometry {
  int64_t n, h, w, c;  // input, NHWC
  int64_t kh, kw, o;   // kernel, HWIO
  int64_t oh, ow;      // output spatial size
  int64_t stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right;
  Type type;
  int64_t groups = 1;

  memory::desc Activations() const { return memory::desc({n, c, h, w}, type, Tag::nhwc); }
  memory::desc Output() const { return memory::desc({n, o, oh, ow}, type, Tag::nhwc); }
  // Grouped weights are 5-D (g, o/g, i/g, h, w); HWIO with O = (g, o/g) is hwigo.
  memory::desc Weights(Tag tag) const {
    if (groups == 1) return memory::desc({o, c, kh, kw}, type, tag);
    return memory::desc({groups, o / groups, c / groups, kh, kw}, type, tag);
  }
  memory::desc UserWeights() const { return Weights(groups == 1 ? Tag::hwio : Tag::hwigo); }
  memory::dims Strides() const { return {stride_h, stride_w}; }
  memory::dims PadLow() const { return {pad_top, pad_left}; }
  memory::dims PadHigh() const { return {pad_bottom, pad_right}; }

  std::string Key(Direction direction) const {
    std::string key = std::to_string(static_cast<int>(direction)) + "," +
                      std::to_string(static_cast<int>(type));
    for (int64_t v : {n, h, w, c, kh, kw, o, oh, ow, stride_h, stride_w, pad_top,
                      pad_left, pad_bottom, pad_right, groups}) {
      key += "," + std::to_string(v);
    }
    return key;
  }
};

// A compiled primitive for one (direction, geometry), plus the reorder between
// the caller's HWIO kernel and the blocked layout oneDNN picked for it.
// Creating a primitive JIT-compiles a kernel: far too slow for every step.
struct Plan {
  dnnl::primitive conv;
  memory::desc weights;     // the layout the primitive uses
  memory::desc scratchpad;  // user-managed, so concurrent calls never share one
  bool reorder_weights = false;
  dnnl::reorder weights_reorder;  // user -> primitive (or back, for gradients)
};

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

std::shared_ptr<Plan> MakePlan(Direction direction, const Geometry& g) {
  auto plan = std::make_shared<Plan>();
  const memory::desc user_weights = g.UserWeights();
  const memory::desc any_weights = g.Weights(Tag::any);
  // The backward primitives take the forward one as a hint.
  dnnl::convolution_forward::primitive_desc forward(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      g.Activations(), any_weights, g.Output(), g.Strides(), g.PadLow(), g.PadHigh(),
      UserScratchpad());
  if (direction == Direction::kForward) {
    plan->conv = dnnl::convolution_forward(forward);
    plan->weights = forward.weights_desc();
    plan->scratchpad = forward.scratchpad_desc();
  } else if (direction == Direction::kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, g.Activations(), any_weights,
        g.Output(), g.Strides(), g.PadLow(), g.PadHigh(), forward, UserScratchpad());
    plan->conv = dnnl::convolution_backward_data(pd);
    plan->weights = pd.weights_desc();
    plan->scratchpad = pd.scratchpad_desc();
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, g.Activations(), any_weights,
        g.Output(), g.Strides(), g.PadLow(), g.PadHigh(), forward, UserScratchpad());
    plan->conv = dnnl::convolution_backward_weights(pd);
    plan->weights = pd.diff_weights_desc();
    plan->scratchpad = pd.scratchpad_desc();
  }
  if (std::getenv("CIFAR_JAX_ONEDNN_VERBOSE") != nullptr) {
    const char* impl = "?";
    dnnl_primitive_desc_query(plan->conv.get_primitive_desc(), dnnl_query_impl_info_str, 0,
                              &impl);
    std::fprintf(stderr, "cifar_jax oneDNN %s: %s\n", g.Key(direction).c_str(), impl);
  }
  if (plan->weights != user_weights) {
    plan->reorder_weights = true;
    plan->weights_reorder = direction == Direction::kBackwardWeights
        ? dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), plan->weights, Engine(),
                                                      user_weights))
        : dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), user_weights, Engine(),
                                                      plan->weights));
  }
  return plan;
}

std::shared_ptr<Plan> GetPlan(Direction direction, const Geometry& g) {
  static std::mutex mutex;
  static std::unordered_map<std::string, std::shared_ptr<Plan>> plans;
  const std::string key = g.Key(direction);
  std::lock_guard<std::mutex> lock(mutex);
  auto it = plans.find(key);
  if (it != plans.end()) return it->second;
  auto plan = MakePlan(direction, g);
  plans.emplace(key, plan);
  return plan;
}

// Grow-only buffers per calling thread for the scratchpad and for the kernel
// in oneDNN's layout. Each call runs synchronously on its thread, so calls
// never share one, and a step does not pay for allocating (and page-faulting)
// megabytes on every convolution.
enum class Slot { kScratchpad = 0, kWeights = 1 };

void* ThreadBuffer(Slot slot, size_t size) {
  struct Deleter {
    void operator()(void* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<void, Deleter> buffers[2];
  thread_local size_t capacities[2] = {0, 0};
  const int i = static_cast<int>(slot);
  if (size > capacities[i]) {
    buffers[i].reset();
    capacities[i] = 0;
    const size_t capacity = (size + 63) / 64 * 64;
    buffers[i].reset(std::aligned_alloc(64, capacity));
    if (buffers[i] == nullptr) throw std::bad_alloc();
    capacities[i] = capacity;
  }
  return buffers[i].get();
}

// `activations` is x (forward, backward-weights) or dx (backward-data),
// `output` is y (forward) or dy (backward), `weights` is w or dw.
ffi::Error Run(Direction direction, const Geometry& g, void* activations, void* weights,
               void* output) {
  try {
    auto plan = GetPlan(direction, g);
    dnnl::stream stream(Engine());
    memory user_weights(g.UserWeights(), Engine(), weights);
    memory primitive_weights =
        plan->reorder_weights
            ? memory(plan->weights, Engine(), ThreadBuffer(Slot::kWeights, plan->weights.get_size()))
            : user_weights;
    memory scratchpad(plan->scratchpad, Engine(),
                      ThreadBuffer(Slot::kScratchpad, plan->scratchpad.get_size()));
    memory act(g.Activations(), Engine(), activations);
    memory out(g.Output(), Engine(), output);
    if (direction == Direction::kForward) {
      if (plan->reorder_weights) plan->weights_reorder.execute(stream, user_weights, primitive_weights);
      plan->conv.execute(stream, {{DNNL_ARG_SRC, act}, {DNNL_ARG_WEIGHTS, primitive_weights},
                                  {DNNL_ARG_DST, out}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else if (direction == Direction::kBackwardData) {
      if (plan->reorder_weights) plan->weights_reorder.execute(stream, user_weights, primitive_weights);
      plan->conv.execute(stream, {{DNNL_ARG_DIFF_SRC, act}, {DNNL_ARG_WEIGHTS, primitive_weights},
                                  {DNNL_ARG_DIFF_DST, out}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else {
      plan->conv.execute(stream, {{DNNL_ARG_SRC, act}, {DNNL_ARG_DIFF_WEIGHTS, primitive_weights},
                                  {DNNL_ARG_DIFF_DST, out}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
      if (plan->reorder_weights) plan->weights_reorder.execute(stream, primitive_weights, user_weights);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal,
                      std::string("oneDNN convolution failed: ") + e.what());
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      "oneDNN convolution: out of memory for its scratchpad");
  }
  return ffi::Error::Success();
}

using Buffer = ffi::AnyBuffer;
using Result = ffi::Result<ffi::AnyBuffer>;

// The geometry of a call whose three buffers are `x` (activations: x or dx),
// `w` (w or dw) and `y` (y or dy); fails unless they are 4-D and share a
// supported element type.
ffi::ErrorOr<Geometry> MakeGeometry(const Buffer& x, const Buffer& w, const Buffer& y,
                                    int64_t stride_h, int64_t stride_w, int64_t pad_top,
                                    int64_t pad_left, int64_t pad_bottom, int64_t pad_right) {
  const ffi::DataType dtype = x.element_type();
  if (w.element_type() != dtype || y.element_type() != dtype ||
      (dtype != ffi::DataType::F32 && dtype != ffi::DataType::BF16)) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "oneDNN convolution: operands must all be float32 or all bfloat16"));
  }
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y.dimensions();
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4) {
    return ffi::Unexpected(
        ffi::Error::InvalidArgument("oneDNN convolution: operands must be 4-D"));
  }
  if (wd[2] <= 0 || xd[3] % wd[2] != 0 || wd[3] % (xd[3] / wd[2]) != 0) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "oneDNN convolution: the input channels must be a multiple of the kernel's, "
        "and the output channels of the groups"));
  }
  return Geometry{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], yd[1], yd[2],
                  stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right,
                  dtype == ffi::DataType::F32 ? Type::f32 : Type::bf16, xd[3] / wd[2]};
}

ffi::Error Forward(Buffer x, Buffer w, Result y, int64_t sh, int64_t sw, int64_t pt,
                   int64_t pl, int64_t pb, int64_t pr) {
  auto g = MakeGeometry(x, w, *y, sh, sw, pt, pl, pb, pr);
  if (g.has_error()) return g.error();
  return Run(Direction::kForward, *g, x.untyped_data(), w.untyped_data(), y->untyped_data());
}

ffi::Error BackwardData(Buffer dy, Buffer w, Result dx, int64_t sh, int64_t sw, int64_t pt,
                        int64_t pl, int64_t pb, int64_t pr) {
  auto g = MakeGeometry(*dx, w, dy, sh, sw, pt, pl, pb, pr);
  if (g.has_error()) return g.error();
  return Run(Direction::kBackwardData, *g, dx->untyped_data(), w.untyped_data(),
             dy.untyped_data());
}

ffi::Error BackwardWeights(Buffer x, Buffer dy, Result dw, int64_t sh, int64_t sw, int64_t pt,
                           int64_t pl, int64_t pb, int64_t pr) {
  auto g = MakeGeometry(x, *dw, dy, sh, sw, pt, pl, pb, pr);
  if (g.has_error()) return g.error();
  return Run(Direction::kBackwardWeights, *g, x.untyped_data(), dw->untyped_data(),
             dy.untyped_data());
}

// Whether oneDNN can create the forward, backward-data and backward-weights
// primitives, dense and depthwise, for `type` on this CPU (e.g. bf16 on a CPU without AVX-512 it
// cannot): asked once at start-up so that a run never fails in a step.
bool Supports(Type type) {
  // A dense and a depthwise convolution (16 groups of one channel): oneDNN's
  // kernels for the two are different, and a run may need both.
  const Geometry dense{2, 8, 8, 16, 3, 3, 16, 8, 8, 1, 1, 1, 1, 1, 1, type};
  const Geometry depthwise{2, 8, 8, 16, 3, 3, 16, 8, 8, 1, 1, 1, 1, 1, 1, type, 16};
  try {
    for (const Geometry& g : {dense, depthwise}) {
      for (Direction d : {Direction::kForward, Direction::kBackwardData,
                          Direction::kBackwardWeights}) {
        MakePlan(d, g);
      }
    }
  } catch (const dnnl::error&) {
    return false;
  }
  return true;
}

const char* IsaName(dnnl::cpu_isa isa) {
  switch (isa) {
    case dnnl::cpu_isa::sse41: return "sse41";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx2_vnni_2: return "avx2_vnni_2";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_fp16: return "avx512_core_fp16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    case dnnl::cpu_isa::avx512_core_amx_fp16: return "avx512_core_amx_fp16";
    default: return "default";
  }
}

PyObject* PySupports(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8(arg);
  if (name == nullptr) return nullptr;
  const std::string dtype(name);
  if (dtype != "f32" && dtype != "bf16") {
    PyErr_SetString(PyExc_ValueError, "supports() takes 'f32' or 'bf16'");
    return nullptr;
  }
  return PyBool_FromLong(Supports(dtype == "f32" ? Type::f32 : Type::bf16));
}

PyObject* PyCpuIsa(PyObject*, PyObject*) {
  return PyUnicode_FromString(IsaName(dnnl::get_effective_cpu_isa()));
}

}  // namespace

#define CONV_BINDING()                                                       \
  ffi::Ffi::Bind()                                                           \
      .Arg<Buffer>()                                                         \
      .Arg<Buffer>()                                                         \
      .Ret<Buffer>()                                                         \
      .Attr<int64_t>("stride_h")                                             \
      .Attr<int64_t>("stride_w")                                             \
      .Attr<int64_t>("pad_top")                                              \
      .Attr<int64_t>("pad_left")                                             \
      .Attr<int64_t>("pad_bottom")                                           \
      .Attr<int64_t>("pad_right")

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvForward, Forward, CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBackwardData, BackwardData, CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBackwardWeights, BackwardWeights, CONV_BINDING());

// The attention and matmul handlers (onednn_attention.cc, onednn_matmul.cc),
// exported by this module too.
extern "C" XLA_FFI_Error* OnednnAttentionForward(XLA_FFI_CallFrame* call_frame);
extern "C" XLA_FFI_Error* OnednnAttentionBackward(XLA_FFI_CallFrame* call_frame);
extern "C" XLA_FFI_Error* OnednnMatmul(XLA_FFI_CallFrame* call_frame);

#ifndef CIFAR_JAX_JAXLIB_VERSION
#error "setup.py defines CIFAR_JAX_JAXLIB_VERSION, the jaxlib the FFI headers come from"
#endif

static PyMethodDef methods[] = {
    {"supports", PySupports, METH_O,
     "supports(dtype) -> bool: oneDNN can create the convolution primitives for "
     "'f32' or 'bf16' on this CPU."},
    {"cpu_isa", PyCpuIsa, METH_NOARGS,
     "cpu_isa() -> str: the instruction set oneDNN dispatches to (ONEDNN_MAX_CPU_ISA "
     "applied)."},
    {nullptr, nullptr, 0, nullptr}};

static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_onednn_conv",
                                 "oneDNN convolution handlers for XLA FFI.", -1, methods};

PyMODINIT_FUNC PyInit__onednn_conv(void) {
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  const std::pair<const char*, XLA_FFI_Handler*> handlers[] = {
      {"OnednnConvForward", OnednnConvForward},
      {"OnednnConvBackwardData", OnednnConvBackwardData},
      {"OnednnConvBackwardWeights", OnednnConvBackwardWeights},
      {"OnednnAttentionForward", OnednnAttentionForward},
      {"OnednnAttentionBackward", OnednnAttentionBackward},
      {"OnednnMatmul", OnednnMatmul}};
  if (PyModule_AddStringConstant(module, "JAXLIB_VERSION", CIFAR_JAX_JAXLIB_VERSION) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  for (const auto& [name, handler] : handlers) {
    PyObject* capsule = PyCapsule_New(reinterpret_cast<void*>(handler), nullptr, nullptr);
    if (capsule == nullptr || PyModule_AddObject(module, name, capsule) < 0) {
      Py_XDECREF(capsule);
      Py_DECREF(module);
      return nullptr;
    }
  }
  return module;
}
