// Event-driven synapses for stbp (issue 17): conv k x k (stride 1, same padding) and linear
// layers whose input is mostly zero (0/1 spikes, or average-pooled spikes).
//
// The input is read once into per-pixel lists of its non-zero channels (CSR: offsets, channel
// indices, values). The forward pass then adds, for each output pixel, the weight rows of the
// active inputs of its k x k neighbourhood; the weight gradient adds the output-gradient rows
// at the active inputs. A linear layer is the case k = 1 on a 1 x 1 map.
//
// Portable C++: GCC/Clang vector extensions, which the compiler lowers to the widest vectors
// that -march gives (AVX-512, AVX2, SSE, NEON, or scalar code); no intrinsics. Accumulation is
// fp32 throughout. OpenMP over output pixels / weight blocks, with torch's thread count.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
#else
constexpr int64_t kLanes = 8;
#endif
typedef float vec __attribute__((vector_size(kLanes * sizeof(float))));
// Vectors per block of output channels: the block's accumulators stay in registers.
constexpr int kBlockVecs = 8;
constexpr int64_t kBlock = kLanes * kBlockVecs;

inline vec load(const float* p) {
    vec v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline void store(float* p, const vec& v) { std::memcpy(p, &v, sizeof v); }

inline vec splat(float x) {
    vec v;
    for (int64_t i = 0; i < kLanes; ++i) v[i] = x;
    return v;
}

// The first `count` floats of `p` (the rest zero): an output-gradient row that ends inside a
// vector.
inline vec load_partial(const float* p, int64_t count) {
    float tmp[kLanes] = {};
    std::memcpy(tmp, p, sizeof(float) * count);
    return load(tmp);
}

inline void store_partial(float* p, const vec& v, int64_t count) {
    float tmp[kLanes];
    store(tmp, v);
    std::memcpy(p, tmp, sizeof(float) * count);
}

struct Lists {
    const int64_t* offsets;  // [P + 1]
    const int32_t* index;    // [nnz] channel of each active input
    const float* value;      // [nnz] its value
};

Lists lists_of(const at::Tensor& offsets, const at::Tensor& index, const at::Tensor& value) {
    TORCH_CHECK(offsets.scalar_type() == at::kLong && offsets.is_contiguous(), "offsets: int64");
    TORCH_CHECK(index.scalar_type() == at::kInt && index.is_contiguous(), "index: int32");
    TORCH_CHECK(value.scalar_type() == at::kFloat && value.is_contiguous(), "value: float32");
    return {offsets.data_ptr<int64_t>(), index.data_ptr<int32_t>(), value.data_ptr<float>()};
}

int threads() { return std::max(1, at::get_num_threads()); }

// ---------------------------------------------------------------------- active lists

template <typename T>
inline bool all_zero(const T* row, int64_t n) {
    bool zero = true;
    for (int64_t i = 0; i < n; ++i) zero &= static_cast<float>(row[i]) == 0.f;
    return zero;
}

template <>
inline bool all_zero<float>(const float* row, int64_t n) {
    uint32_t bits = 0;  // OR of the bit patterns without the sign: -0 counts as zero
    for (int64_t i = 0; i < n; ++i) {
        uint32_t b;
        std::memcpy(&b, row + i, sizeof b);
        bits |= b & 0x7fffffffu;
    }
    return bits == 0;
}

template <typename T>
void scan_rows(const T* data, int64_t C, int64_t p0, int64_t p1, int64_t* counts,
               std::vector<int32_t>& index, std::vector<float>& value, bool& multi_valued) {
    constexpr int64_t kGroup = 16;
    for (int64_t p = p0; p < p1; ++p) {
        const T* row = data + p * C;
        const size_t before = index.size();
        for (int64_t c0 = 0; c0 < C; c0 += kGroup) {
            const int64_t n = std::min(kGroup, C - c0);
            if (all_zero(row + c0, n)) continue;
            for (int64_t c = c0; c < c0 + n; ++c) {
                const float v = static_cast<float>(row[c]);
                if (v != 0.f) {
                    index.push_back(static_cast<int32_t>(c));
                    value.push_back(v);
                    multi_valued |= v != 1.f;
                }
            }
        }
        counts[p] = static_cast<int64_t>(index.size() - before);
    }
}

template <typename T>
void scan_in_parallel(const T* data, int64_t P, int64_t C, int nt, int64_t* counts,
                      std::vector<std::vector<int32_t>>& index,
                      std::vector<std::vector<float>>& value, std::vector<char>& multi) {
#pragma omp parallel for schedule(static, 1) num_threads(nt)
    for (int t = 0; t < nt; ++t) {
        bool m = false;
        scan_rows(data, C, P * t / nt, P * (t + 1) / nt, counts, index[t], value[t], m);
        multi[t] = m;
    }
}

// rows [P, C] (contiguous; a channels_last map is [N*H*W, C]) -> (offsets [P + 1] int64,
// channel index [nnz] int32, value [nnz] float32, binary: every value is 1). Each thread scans
// a contiguous range of rows into its own lists, which are then concatenated.
std::tuple<at::Tensor, at::Tensor, at::Tensor, bool> active_lists(const at::Tensor& rows) {
    TORCH_CHECK(rows.dim() == 2 && rows.is_contiguous(), "active_lists: contiguous [P, C] rows");
    TORCH_CHECK(rows.size(1) < (int64_t(1) << 31), "active_lists: too many channels");
    const int64_t P = rows.size(0), C = rows.size(1);
    auto offsets = at::empty({P + 1}, rows.options().dtype(at::kLong));
    int64_t* off = offsets.data_ptr<int64_t>();
    const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads(), P)));
    std::vector<std::vector<int32_t>> index(nt);
    std::vector<std::vector<float>> value(nt);
    std::vector<char> multi(nt, 0);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, rows.scalar_type(), "lists", [&] {
        scan_in_parallel(rows.data_ptr<scalar_t>(), P, C, nt, off, index, value, multi);
    });
    std::vector<int64_t> base(nt + 1, 0);
    for (int t = 0; t < nt; ++t) base[t + 1] = base[t] + static_cast<int64_t>(index[t].size());
    const int64_t nnz = base[nt];
    auto idx = at::empty({nnz}, rows.options().dtype(at::kInt));
    auto val = at::empty({nnz}, rows.options().dtype(at::kFloat));
    int32_t* idx_out = idx.data_ptr<int32_t>();
    float* val_out = val.data_ptr<float>();
#pragma omp parallel for schedule(static, 1) num_threads(nt)
    for (int t = 0; t < nt; ++t) {
        std::copy(index[t].begin(), index[t].end(), idx_out + base[t]);
        std::copy(value[t].begin(), value[t].end(), val_out + base[t]);
        int64_t running = base[t];
        for (int64_t p = P * t / nt; p < P * (t + 1) / nt; ++p) {
            const int64_t count = off[p];
            off[p] = running;
            running += count;
        }
    }
    off[P] = nnz;
    bool binary = true;
    for (int t = 0; t < nt; ++t) binary &= !multi[t];
    return {offsets, idx, val, binary};
}

// ---------------------------------------------------------------------- forward

// acc += the rows of `weights` (row stride ld) of pixel p's active inputs (times their values).
template <int V, bool Binary>
inline void gather_rows(const Lists& L, int64_t p, const float* weights, int64_t ld, vec* acc) {
    for (int64_t e = L.offsets[p]; e < L.offsets[p + 1]; ++e) {
        const float* row = weights + static_cast<int64_t>(L.index[e]) * ld;
        if (Binary) {
#pragma GCC unroll 16
            for (int j = 0; j < V; ++j) acc[j] += load(row + j * kLanes);
        } else {
            const vec v = splat(L.value[e]);
#pragma GCC unroll 16
            for (int j = 0; j < V; ++j) acc[j] += v * load(row + j * kLanes);
        }
    }
}

struct ConvShape {
    int64_t N, H, W, k, Cin, Cout, ld;  // ld: padded Cout, the row stride of the packed weight
};

// One output row (n, oh) of the output channels [b0, b0 + V * kLanes).
template <int V, bool Binary>
void forward_row(const Lists& L, const ConvShape& s, int64_t n, int64_t oh, int64_t b0,
                 const float* weight, const float* bias, float* out) {
    const int64_t pad = s.k / 2;
    const int64_t valid = std::min<int64_t>(V * kLanes, s.Cout - b0);
    for (int64_t ow = 0; ow < s.W; ++ow) {
        vec acc[V];
#pragma GCC unroll 16
        for (int j = 0; j < V; ++j) acc[j] = bias ? load(bias + b0 + j * kLanes) : vec{};
        for (int64_t kh = 0; kh < s.k; ++kh) {
            const int64_t ih = oh + kh - pad;
            if (ih < 0 || ih >= s.H) continue;
            for (int64_t kw = 0; kw < s.k; ++kw) {
                const int64_t iw = ow + kw - pad;
                if (iw < 0 || iw >= s.W) continue;
                const float* tap = weight + (kh * s.k + kw) * s.Cin * s.ld + b0;
                gather_rows<V, Binary>(L, (n * s.H + ih) * s.W + iw, tap, s.ld, acc);
            }
        }
        float* o = out + ((n * s.H + oh) * s.W + ow) * s.Cout + b0;
        for (int j = 0; j < V; ++j) {
            const int64_t left = valid - j * kLanes;
            if (left >= kLanes) store(o + j * kLanes, acc[j]);
            else if (left > 0) store_partial(o + j * kLanes, acc[j], left);
        }
    }
}

template <bool Binary>
void forward_row_any(int vecs, const Lists& L, const ConvShape& s, int64_t n, int64_t oh,
                     int64_t b0, const float* weight, const float* bias, float* out) {
    switch (vecs) {
#define STBP_CASE(V) \
    case V: return forward_row<V, Binary>(L, s, n, oh, b0, weight, bias, out);
        STBP_CASE(1) STBP_CASE(2) STBP_CASE(3) STBP_CASE(4)
        STBP_CASE(5) STBP_CASE(6) STBP_CASE(7) STBP_CASE(8)
#undef STBP_CASE
    }
}

int block_vecs(const ConvShape& s, int64_t b0) {
    return static_cast<int>(std::min<int64_t>(kBlockVecs, (s.ld - b0) / kLanes));
}

// out [N*H*W, Cout] float32 = conv(x, weight) + bias, from x's active lists.
// weight: [k, k, Cin, ld] float32 (ld = Cout rounded up to the vector width, zero padded);
// bias: [ld] float32 or empty.
at::Tensor forward(const at::Tensor& offsets, const at::Tensor& index, const at::Tensor& value,
                   bool binary, int64_t N, int64_t H, int64_t W, int64_t k,
                   const at::Tensor& weight, const at::Tensor& bias, int64_t Cout) {
    TORCH_CHECK(weight.dim() == 4 && weight.is_contiguous() && weight.scalar_type() == at::kFloat,
                "forward: weight [k, k, Cin, ld] float32");
    const ConvShape s{N, H, W, k, weight.size(2), Cout, weight.size(3)};
    TORCH_CHECK(s.ld % kLanes == 0 && s.ld >= Cout, "forward: ld must be a multiple of ", kLanes);
    TORCH_CHECK(offsets.numel() == N * H * W + 1, "forward: lists and shape disagree");
    const Lists L = lists_of(offsets, index, value);
    auto out = at::empty({N * H * W, Cout}, weight.options());
    const float* w = weight.data_ptr<float>();
    const float* b = bias.numel() ? bias.data_ptr<float>() : nullptr;
    float* o = out.data_ptr<float>();
    const int64_t blocks = (s.ld + kBlock - 1) / kBlock, rows = N * H;
    // Block outermost: a thread's consecutive rows reuse one weight block from its cache.
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads())
    for (int64_t blk = 0; blk < blocks; ++blk) {
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t b0 = blk * kBlock;
            if (binary) forward_row_any<true>(block_vecs(s, b0), L, s, r / H, r % H, b0, w, b, o);
            else forward_row_any<false>(block_vecs(s, b0), L, s, r / H, r % H, b0, w, b, o);
        }
    }
    return out;
}

// ---------------------------------------------------------------------- weight gradient

// grad_w[row of each active input] += (its value times) the gradient vector g.
template <int V, bool Binary>
inline void scatter_rows(const Lists& L, int64_t p, const vec* g, float* grad_w, int64_t ld) {
    // Locals: the stores (memcpy) may alias anything, so the lists' fields would be reloaded.
    const int64_t begin = L.offsets[p], end = L.offsets[p + 1];
    const int32_t* index = L.index;
    const float* value = L.value;
    for (int64_t e = begin; e < end; ++e) {
        float* row = grad_w + static_cast<int64_t>(index[e]) * ld;
        if (Binary) {
#pragma GCC unroll 16
            for (int j = 0; j < V; ++j) store(row + j * kLanes, load(row + j * kLanes) + g[j]);
        } else {
            const vec v = splat(value[e]);
#pragma GCC unroll 16
            for (int j = 0; j < V; ++j)
                store(row + j * kLanes, load(row + j * kLanes) + v * g[j]);
        }
    }
}

template <int V>
inline void load_grad(const float* g, int64_t valid, vec* out) {
#pragma GCC unroll 16
    for (int j = 0; j < V; ++j) {
        const int64_t left = valid - j * kLanes;
        out[j] = left >= kLanes ? load(g + j * kLanes)
                 : left > 0     ? load_partial(g + j * kLanes, left)
                                : vec{};
    }
}

// Input pixel p = (n, ih, iw): its active inputs meet the output gradient at the k x k output
// pixels (ih - kh + pad, iw - kw + pad), for the output channels [b0, b0 + V * kLanes).
template <int V, bool Binary>
void weight_grad_pixel(const Lists& L, const ConvShape& s, int64_t p, int64_t b0,
                       const float* grad, float* grad_w) {
    if (L.offsets[p] == L.offsets[p + 1]) return;
    const int64_t pad = s.k / 2, iw = p % s.W, ih = (p / s.W) % s.H, n = p / (s.W * s.H);
    const int64_t valid = std::min<int64_t>(V * kLanes, s.Cout - b0);
    for (int64_t kh = 0; kh < s.k; ++kh) {
        const int64_t oh = ih - kh + pad;
        if (oh < 0 || oh >= s.H) continue;
        for (int64_t kw = 0; kw < s.k; ++kw) {
            const int64_t ow = iw - kw + pad;
            if (ow < 0 || ow >= s.W) continue;
            vec g[V];
            load_grad<V>(grad + ((n * s.H + oh) * s.W + ow) * s.Cout + b0, valid, g);
            float* tap = grad_w + (kh * s.k + kw) * s.Cin * s.ld + b0;
            scatter_rows<V, Binary>(L, p, g, tap, s.ld);
        }
    }
}

template <bool Binary>
void weight_grad_pixel_any(int vecs, const Lists& L, const ConvShape& s, int64_t p, int64_t b0,
                           const float* grad, float* grad_w) {
    switch (vecs) {
#define STBP_CASE(V) \
    case V: return weight_grad_pixel<V, Binary>(L, s, p, b0, grad, grad_w);
        STBP_CASE(1) STBP_CASE(2) STBP_CASE(3) STBP_CASE(4)
        STBP_CASE(5) STBP_CASE(6) STBP_CASE(7) STBP_CASE(8)
#undef STBP_CASE
    }
}

// grad_w [k, k, Cin, ld] float32 from the input's active lists and the output gradient
// grad [N*H*W, Cout] float32. Each thread accumulates a private copy over its range of input
// pixels; the copies are summed.
at::Tensor weight_grad(const at::Tensor& offsets, const at::Tensor& index,
                       const at::Tensor& value, bool binary, int64_t N, int64_t H, int64_t W,
                       int64_t k, int64_t Cin, int64_t ld, const at::Tensor& grad) {
    TORCH_CHECK(grad.dim() == 2 && grad.is_contiguous() && grad.scalar_type() == at::kFloat,
                "weight_grad: grad [N*H*W, Cout] float32");
    const ConvShape s{N, H, W, k, Cin, grad.size(1), ld};
    TORCH_CHECK(ld % kLanes == 0 && ld >= s.Cout, "weight_grad: ld must be a multiple of ",
                kLanes);
    TORCH_CHECK(offsets.numel() == N * H * W + 1 && grad.size(0) == N * H * W,
                "weight_grad: lists, grad and shape disagree");
    const Lists L = lists_of(offsets, index, value);
    const int64_t P = N * H * W, size = k * k * Cin * ld;
    const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads(), P)));
    auto partial = at::zeros({nt, size}, grad.options());
    const float* g = grad.data_ptr<float>();
    float* acc = partial.data_ptr<float>();
#pragma omp parallel for schedule(static, 1) num_threads(nt)
    for (int t = 0; t < nt; ++t) {
        for (int64_t p = P * t / nt; p < P * (t + 1) / nt; ++p) {
            for (int64_t b0 = 0; b0 < ld; b0 += kBlock) {
                if (binary)
                    weight_grad_pixel_any<true>(block_vecs(s, b0), L, s, p, b0, g, acc + t * size);
                else
                    weight_grad_pixel_any<false>(block_vecs(s, b0), L, s, p, b0, g,
                                                 acc + t * size);
            }
        }
    }
    return (nt == 1 ? partial[0] : partial.sum(0)).view({k, k, Cin, ld});
}

// Linear weight gradient for a large weight: grad_w [Cout, F] float32 directly. Each task owns
// a block of output channels and accumulates it, over all samples, in a [F, block] buffer
// (in cache), then writes it transposed. grad: [N, Cout] float32.
at::Tensor linear_weight_grad(const at::Tensor& offsets, const at::Tensor& index,
                              const at::Tensor& value, bool binary, int64_t F,
                              const at::Tensor& grad) {
    TORCH_CHECK(grad.dim() == 2 && grad.is_contiguous() && grad.scalar_type() == at::kFloat,
                "linear_weight_grad: grad [N, Cout] float32");
    const int64_t N = grad.size(0), Cout = grad.size(1);
    TORCH_CHECK(offsets.numel() == N + 1, "linear_weight_grad: lists and grad disagree");
    const Lists L = lists_of(offsets, index, value);
    const int64_t ld = (Cout + kLanes - 1) / kLanes * kLanes;
    auto out = at::empty({Cout, F}, grad.options());
    const float* g = grad.data_ptr<float>();
    float* o = out.data_ptr<float>();
    const int64_t blocks = (ld + kBlock - 1) / kBlock;
#pragma omp parallel num_threads(threads())
    {
        std::vector<float> buffer(F * kBlock);
#pragma omp for schedule(dynamic, 1)
        for (int64_t blk = 0; blk < blocks; ++blk) {
            const int64_t b0 = blk * kBlock;
            std::fill(buffer.begin(), buffer.end(), 0.f);
            // Each sample is a 1 x 1 map whose gradient row starts at g + n * Cout + b0.
            const ConvShape one{1, 1, 1, 1, F, std::min<int64_t>(kBlock, Cout - b0), kBlock};
            const int vecs = static_cast<int>(std::min<int64_t>(kBlockVecs, (ld - b0) / kLanes));
            for (int64_t n = 0; n < N; ++n) {
                const Lists sample{L.offsets + n, L.index, L.value};
                const float* g_n = g + n * Cout + b0;
                if (binary) weight_grad_pixel_any<true>(vecs, sample, one, 0, 0, g_n, buffer.data());
                else weight_grad_pixel_any<false>(vecs, sample, one, 0, 0, g_n, buffer.data());
            }
            const int64_t width = std::min<int64_t>(kBlock, Cout - b0);
            for (int64_t c = 0; c < width; ++c) {
                float* dst = o + (b0 + c) * F;
                for (int64_t f = 0; f < F; ++f) dst[f] = buffer[f * kBlock + c];
            }
        }
    }
    return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "stbp's event-driven synapse kernels (issue 17)";
    m.attr("lanes") = kLanes;
    m.def("active_lists", &active_lists, "per-row lists of the non-zero channels");
    m.def("forward", &forward, "conv / linear forward from the active lists");
    m.def("weight_grad", &weight_grad, "weight gradient from the active lists");
    m.def("linear_weight_grad", &linear_weight_grad, "[Cout, F] weight gradient, large F");
}
