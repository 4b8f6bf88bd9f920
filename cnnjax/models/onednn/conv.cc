// oneDNN 2-D convolutions (forward, backward-data, backward-weights) as XLA:CPU custom calls through the typed
// XLA FFI. Layouts are JAX's: activations NHWC, kernels HWIO; float32, and bfloat16 (every operand, oneDNN
// accumulating in float32) under the same names with a _bf16 suffix; and the inference forward with a bias, an
// optional residual (aliased to the output) and an optional ReLU as post-ops (cnnjax_onednn_conv_fused[_add]).
// The geometry (strides, explicit padding, kernel dilation) arrives as FFI attributes;
// cnnjax/models/onednn/__init__.py builds, loads and calls this.
//
// oneDNN (https://uxlfoundation.github.io/oneDNN/dev_guide_convolution.html) picks the kernel for a shape when a
// primitive is created, which costs far more than running it, so primitives are made once per (direction,
// shape, geometry) and kept. Activations stay NHWC (oneDNN reads and writes XLA's buffers in place); the kernel
// is left to oneDNN (`format_tag::any`) and reordered from / to HWIO per call, as PyTorch does: with HWIO
// forced, oneDNN falls back to its slow gemm kernels for both backward passes.
//
// Determinism: oneDNN splits a problem into a fixed number of chunks with fixed reduction order for a given
// shape and thread count, so the same inputs give the same bits run to run (tests/test_onednn.py checks it).
// Threads: this is oneDNN's CPU build on OpenMP; the XLA thread that issues a call becomes the master of an OpenMP
// team of cnnjax_onednn_set_num_threads threads and computes with it (no queue, no second pool to hand work to).
#include <omp.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "xla/ffi/api/ffi.h"

#if DNNL_CPU_RUNTIME != DNNL_RUNTIME_OMP
#error "cnnjax needs oneDNN's CPU build on OpenMP: pip install 'cnnjax[onednn]' (onednn-cpu-gomp)"
#endif

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;

namespace {

enum class Direction : int64_t { kForward, kBackwardData, kBackwardWeights };

// The epilogue of an inference convolution (FusedForward): a per-channel bias always, then optionally the
// destination's previous contents added (a residual, oneDNN's sum post-op) and a ReLU (an eltwise post-op).
struct Epilogue {
  bool residual = false, relu = false;
  int64_t Code() const { return 1 + residual + 2 * relu; }  // 0 is "no epilogue" (training's forward)
};

// The shape of one convolution in oneDNN's logical order: src {N, C, H, W}, weights {O, C, KH, KW},
// dst {N, O, OH, OW}; oneDNN counts dilation from 0 (XLA's rhs_dilation 1 is oneDNN's 0).
struct Geometry {
  memory::data_type type;
  memory::dims src, weights, dst, strides, dilates, pad_l, pad_r;

  std::array<int64_t, 25> Key(Direction direction, const Epilogue* epilogue) const {
    std::array<int64_t, 25> key{static_cast<int64_t>(direction), static_cast<int64_t>(type),
                                epilogue ? epilogue->Code() : 0};
    size_t at = 3;
    for (const memory::dims* part : {&src, &weights, &dst, &strides, &dilates, &pad_l, &pad_r})
      for (int64_t value : *part) key[at++] = value;
    return key;
  }
};

struct KeyHash {
  size_t operator()(const std::array<int64_t, 25>& key) const {
    size_t hash = 0;
    for (int64_t value : key) hash = hash * 1000003u ^ static_cast<size_t>(value);
    return hash;
  }
};

// A convolution primitive ready to run, with the reorder between JAX's HWIO kernel and oneDNN's own layout.
struct Kernel {
  dnnl::primitive convolution;
  memory::desc src, weights, dst;       // what `convolution` reads/writes (src/dst in NHWC, weights in any)
  memory::desc user_weights;            // HWIO
  bool reorder_weights = false;
  dnnl::reorder weights_reorder;        // user -> oneDNN (forward, backward data) or oneDNN -> user (weights)
  memory::desc scratchpad;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

std::atomic<int> team_size{0};  // 0: OpenMP's default (OMP_NUM_THREADS, else the cores)

dnnl::stream& Stream() {  // one per calling thread: XLA may run two custom calls at once
  thread_local dnnl::stream stream(Engine());
  return stream;
}

memory::desc Desc(const memory::dims& dims, memory::data_type type, Tag tag) {
  return memory::desc(dims, type, tag);
}

dnnl::primitive_attr Attributes() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // per-call scratch: concurrent calls never share it
  return attr;
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      Desc(g.src, g.type, Tag::nhwc), Desc(g.weights, g.type, Tag::any), Desc(g.dst, g.type, Tag::nhwc), g.strides,
      g.dilates, g.pad_l, g.pad_r, Attributes());
}

// The inference convolution with a bias and `epilogue` as post-ops, computed while the output tile is still in
// registers: the separate elementwise passes over the output that XLA would run otherwise are gone.
dnnl::convolution_forward::primitive_desc FusedForwardDesc(const Geometry& g, const Epilogue& epilogue) {
  dnnl::primitive_attr attr = Attributes();
  dnnl::post_ops post_ops;
  if (epilogue.residual) post_ops.append_sum(1.0f);
  if (epilogue.relu) post_ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
  attr.set_post_ops(post_ops);
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
      Desc(g.src, g.type, Tag::nhwc), Desc(g.weights, g.type, Tag::any), Desc({g.dst[1]}, g.type, Tag::a),
      Desc(g.dst, g.type, Tag::nhwc), g.strides, g.dilates, g.pad_l, g.pad_r, attr);
}

// Both backward primitives take the same arguments, with the forward one as their hint.
template <typename Primitive>
typename Primitive::primitive_desc BackwardDesc(const Geometry& g,
                                                const dnnl::convolution_forward::primitive_desc& forward) {
  return typename Primitive::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, Desc(g.src, g.type, Tag::nhwc), Desc(g.weights, g.type, Tag::any),
      Desc(g.dst, g.type, Tag::nhwc), g.strides, g.dilates, g.pad_l, g.pad_r, forward, Attributes());
}

// The primitive of `pd` and the layouts of its activation, kernel and output arguments (plain or diff_).
template <typename Primitive>
void Describe(Kernel* kernel, const typename Primitive::primitive_desc& pd, dnnl::query src, dnnl::query weights,
              dnnl::query dst) {
  kernel->convolution = Primitive(pd);
  kernel->src = pd.query_md(src);
  kernel->weights = pd.query_md(weights);
  kernel->dst = pd.query_md(dst);
  kernel->scratchpad = pd.scratchpad_desc();
}

Kernel MakeKernel(Direction direction, const Geometry& g, const Epilogue* epilogue) {
  using dnnl::query;
  Kernel kernel;
  kernel.user_weights = Desc(g.weights, g.type, Tag::hwio);
  if (epilogue) {
    Describe<dnnl::convolution_forward>(&kernel, FusedForwardDesc(g, *epilogue), query::src_md, query::weights_md,
                                        query::dst_md);
  } else if (direction == Direction::kForward) {
    Describe<dnnl::convolution_forward>(&kernel, ForwardDesc(g), query::src_md, query::weights_md, query::dst_md);
  } else if (direction == Direction::kBackwardData) {
    Describe<dnnl::convolution_backward_data>(&kernel,
                                              BackwardDesc<dnnl::convolution_backward_data>(g, ForwardDesc(g)),
                                              query::diff_src_md, query::weights_md, query::diff_dst_md);
  } else {
    Describe<dnnl::convolution_backward_weights>(
        &kernel, BackwardDesc<dnnl::convolution_backward_weights>(g, ForwardDesc(g)), query::src_md,
        query::diff_weights_md, query::diff_dst_md);
  }
  kernel.reorder_weights = kernel.weights != kernel.user_weights;
  if (kernel.reorder_weights) {
    kernel.weights_reorder = direction == Direction::kBackwardWeights
                                 ? dnnl::reorder(memory(kernel.weights, Engine(), nullptr),
                                                 memory(kernel.user_weights, Engine(), nullptr))
                                 : dnnl::reorder(memory(kernel.user_weights, Engine(), nullptr),
                                                 memory(kernel.weights, Engine(), nullptr));
  }
  return kernel;
}

const Kernel& CachedKernel(Direction direction, const Geometry& g, const Epilogue* epilogue = nullptr) {
  static std::mutex mutex;
  static std::unordered_map<std::array<int64_t, 25>, std::unique_ptr<Kernel>, KeyHash> cache;
  const auto key = g.Key(direction, epilogue);
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[key];
  if (!slot) slot = std::make_unique<Kernel>(MakeKernel(direction, g, epilogue));
  return *slot;
}

struct Scratch {  // 64-byte aligned bytes owned by one call
  explicit Scratch(size_t bytes) : data(bytes ? std::aligned_alloc(64, (bytes + 63) / 64 * 64) : nullptr) {}
  ~Scratch() { std::free(data); }
  void* data;
};

// Runs `direction` on XLA's buffers: src/dst NHWC, weights HWIO (written for backward-weights); with an
// `epilogue`, the fused inference forward, `bias` its (O,) bias and dst holding the residual when it adds one.
ffi::Error Run(Direction direction, const Geometry& g, void* src, void* weights, void* dst,
               const Epilogue* epilogue = nullptr, void* bias = nullptr) {
  try {
    const Kernel& kernel = CachedKernel(direction, g, epilogue);
    if (const int threads = team_size.load()) omp_set_num_threads(threads);  // this calling thread's teams
    dnnl::stream& stream = Stream();
    memory user_weights(kernel.user_weights, Engine(), weights);
    Scratch reordered(kernel.reorder_weights ? kernel.weights.get_size() : 0);
    memory own_weights = kernel.reorder_weights ? memory(kernel.weights, Engine(), reordered.data) : user_weights;
    Scratch scratch(kernel.scratchpad.get_size());
    memory scratchpad(kernel.scratchpad, Engine(), scratch.data);
    memory src_memory(kernel.src, Engine(), src), dst_memory(kernel.dst, Engine(), dst);
    if (kernel.reorder_weights && direction != Direction::kBackwardWeights)
      kernel.weights_reorder.execute(stream, user_weights, own_weights);
    switch (direction) {
      case Direction::kForward:
        if (epilogue) {
          memory bias_memory(Desc({g.dst[1]}, g.type, Tag::a), Engine(), bias);
          kernel.convolution.execute(stream, {{DNNL_ARG_SRC, src_memory}, {DNNL_ARG_WEIGHTS, own_weights},
                                              {DNNL_ARG_BIAS, bias_memory}, {DNNL_ARG_DST, dst_memory},
                                              {DNNL_ARG_SCRATCHPAD, scratchpad}});
        } else {
          kernel.convolution.execute(stream, {{DNNL_ARG_SRC, src_memory}, {DNNL_ARG_WEIGHTS, own_weights},
                                              {DNNL_ARG_DST, dst_memory}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
        }
        break;
      case Direction::kBackwardData:
        kernel.convolution.execute(stream, {{DNNL_ARG_DIFF_SRC, src_memory}, {DNNL_ARG_WEIGHTS, own_weights},
                                            {DNNL_ARG_DIFF_DST, dst_memory}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
        break;
      case Direction::kBackwardWeights:
        kernel.convolution.execute(stream, {{DNNL_ARG_SRC, src_memory}, {DNNL_ARG_DIFF_WEIGHTS, own_weights},
                                            {DNNL_ARG_DIFF_DST, dst_memory}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
        if (kernel.reorder_weights) kernel.weights_reorder.execute(stream, own_weights, user_weights);
        break;
    }
    stream.wait();  // the buffers above are freed on return
  } catch (const dnnl::error& error) {
    return ffi::Error::Internal(std::string("cnnjax oneDNN convolution: ") + error.what());
  }
  return ffi::Error::Success();
}

// The geometry from XLA's shapes (x NHWC, w HWIO, y NHWC) and the attributes; checks what JAX's side
// guarantees, so a wrong call fails in one line instead of reading out of bounds.
ffi::ErrorOr<Geometry> MakeGeometry(memory::data_type type, ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                                    ffi::Span<const int64_t> y, ffi::Span<const int64_t> strides,
                                    ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation) {
  if (x.size() != 4 || w.size() != 4 || y.size() != 4 || strides.size() != 2 || padding.size() != 4 ||
      dilation.size() != 2)
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "cnnjax oneDNN convolution: expects rank-4 NHWC/HWIO operands, 2 strides, 4 pads and 2 dilations"));
  if (x[3] != w[2] || y[0] != x[0] || y[3] != w[3])
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "cnnjax oneDNN convolution: operand shapes disagree (NHWC, HWIO, NHWC)"));
  Geometry g;
  g.type = type;
  g.src = {x[0], x[3], x[1], x[2]};
  g.weights = {w[3], w[2], w[0], w[1]};
  g.dst = {y[0], y[3], y[1], y[2]};
  g.strides = {strides[0], strides[1]};
  g.dilates = {dilation[0] - 1, dilation[1] - 1};
  g.pad_l = {padding[0], padding[2]};
  g.pad_r = {padding[1], padding[3]};
  return g;
}

template <ffi::DataType T>
constexpr memory::data_type kOneDnnType = T == ffi::DataType::BF16 ? memory::data_type::bf16 : memory::data_type::f32;

template <ffi::DataType T>
ffi::Error Forward(ffi::Buffer<T> x, ffi::Buffer<T> w, ffi::ResultBuffer<T> y, ffi::Span<const int64_t> strides,
                   ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation) {
  auto g = MakeGeometry(kOneDnnType<T>, x.dimensions(), w.dimensions(), y->dimensions(), strides, padding, dilation);
  if (g.has_error()) return g.error();
  return Run(Direction::kForward, g.value(), x.untyped_data(), w.untyped_data(), y->untyped_data());
}

// The inference forward with its epilogue: y = conv(x, w) + b (+ y's previous contents, the residual XLA aliased
// to it, when `Residual`), then ReLU when `relu`.
template <ffi::DataType T, bool Residual>
ffi::Error FusedForward(ffi::Buffer<T> x, ffi::Buffer<T> w, ffi::Buffer<T> b, ffi::RemainingArgs residual,
                        ffi::ResultBuffer<T> y, ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                        ffi::Span<const int64_t> dilation, bool relu) {
  auto g = MakeGeometry(kOneDnnType<T>, x.dimensions(), w.dimensions(), y->dimensions(), strides, padding, dilation);
  if (g.has_error()) return g.error();
  if (b.element_count() != static_cast<size_t>(g.value().dst[1]) || residual.size() != (Residual ? 1 : 0))
    return ffi::Error::InvalidArgument("cnnjax oneDNN fused convolution: expects an (O,) bias and, to add, a residual");
  if (Residual) {
    auto r = residual.get<ffi::Buffer<T>>(0);
    if (r.has_error() || r.value().untyped_data() != y->untyped_data())
      return ffi::Error::InvalidArgument("cnnjax oneDNN fused convolution: the residual must be aliased to the output");
  }
  const Epilogue epilogue{Residual, relu};
  return Run(Direction::kForward, g.value(), x.untyped_data(), w.untyped_data(), y->untyped_data(), &epilogue,
             b.untyped_data());
}

template <ffi::DataType T>
ffi::Error BackwardData(ffi::Buffer<T> dy, ffi::Buffer<T> w, ffi::ResultBuffer<T> dx,
                        ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                        ffi::Span<const int64_t> dilation) {
  auto g = MakeGeometry(kOneDnnType<T>, dx->dimensions(), w.dimensions(), dy.dimensions(), strides, padding,
                        dilation);
  if (g.has_error()) return g.error();
  return Run(Direction::kBackwardData, g.value(), dx->untyped_data(), w.untyped_data(), dy.untyped_data());
}

template <ffi::DataType T>
ffi::Error BackwardWeights(ffi::Buffer<T> x, ffi::Buffer<T> dy, ffi::ResultBuffer<T> dw,
                           ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                           ffi::Span<const int64_t> dilation) {
  auto g = MakeGeometry(kOneDnnType<T>, x.dimensions(), dw->dimensions(), dy.dimensions(), strides, padding,
                        dilation);
  if (g.has_error()) return g.error();
  return Run(Direction::kBackwardWeights, g.value(), x.untyped_data(), dw->untyped_data(), dy.untyped_data());
}

}  // namespace

#define CNNJAX_CONV_BINDING(T)                                                                       \
  ffi::Ffi::Bind()                                                                                    \
      .Arg<ffi::Buffer<T>>()                                                                          \
      .Arg<ffi::Buffer<T>>()                                                                          \
      .Ret<ffi::Buffer<T>>()                                                                          \
      .Attr<ffi::Span<const int64_t>>("strides")                                                      \
      .Attr<ffi::Span<const int64_t>>("padding")                                                      \
      .Attr<ffi::Span<const int64_t>>("dilation")

XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_onednn_conv_forward, Forward<ffi::F32>, CNNJAX_CONV_BINDING(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_onednn_conv_backward_data, BackwardData<ffi::F32>, CNNJAX_CONV_BINDING(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_onednn_conv_backward_weights, BackwardWeights<ffi::F32>,
                              CNNJAX_CONV_BINDING(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_onednn_conv_forward_bf16, Forward<ffi::BF16>, CNNJAX_CONV_BINDING(ffi::BF16));
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_onednn_conv_backward_data_bf16, BackwardData<ffi::BF16>,
                              CNNJAX_CONV_BINDING(ffi::BF16));
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_onednn_conv_backward_weights_bf16, BackwardWeights<ffi::BF16>,
                              CNNJAX_CONV_BINDING(ffi::BF16));

#define CNNJAX_FUSED_BINDING(T)                                                                      \
  ffi::Ffi::Bind()                                                                                    \
      .Arg<ffi::Buffer<T>>()                                                                          \
      .Arg<ffi::Buffer<T>>()                                                                          \
      .Arg<ffi::Buffer<T>>()                                                                          \
      .RemainingArgs()                                                                                \
      .Ret<ffi::Buffer<T>>()                                                                          \
      .Attr<ffi::Span<const int64_t>>("strides")                                                      \
      .Attr<ffi::Span<const int64_t>>("padding")                                                      \
      .Attr<ffi::Span<const int64_t>>("dilation")                                                     \
      .Attr<bool>("relu")

XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_onednn_conv_fused, (FusedForward<ffi::F32, false>),
                              CNNJAX_FUSED_BINDING(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_onednn_conv_fused_add, (FusedForward<ffi::F32, true>),
                              CNNJAX_FUSED_BINDING(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_onednn_conv_fused_bf16, (FusedForward<ffi::BF16, false>),
                              CNNJAX_FUSED_BINDING(ffi::BF16));
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnnjax_onednn_conv_fused_add_bf16, (FusedForward<ffi::BF16, true>),
                              CNNJAX_FUSED_BINDING(ffi::BF16));

// Sets the OpenMP team of every later call (the last call wins).
extern "C" void cnnjax_onednn_set_num_threads(int threads) { team_size.store(threads); }

// Whether this CPU computes bfloat16 natively (AVX512-BF16 or later): elsewhere oneDNN would emulate it slowly.
extern "C" int cnnjax_onednn_has_bfloat16() {
  const auto isa = static_cast<int>(dnnl::get_effective_cpu_isa());
  const auto bf16 = static_cast<int>(dnnl::cpu_isa::avx512_core_bf16);
  return (isa & bf16) == bf16;
}

// oneDNN's version as major * 10000 + minor * 100 + patch, for the log line and the bench records.
extern "C" int cnnjax_onednn_version() {
  const dnnl_version_t* version = dnnl_version();
  return version->major * 10000 + version->minor * 100 + version->patch;
}
