// Fused CPU kernels for the passes over the frozen multimodal history (see recsys/models/fused.py).
//
// Notation: B batch, L padded history length, D vector width (8 * DV), T tiers,
// H width of the attention unit's one hidden layer (8 * HV).
//
// Each kernel walks an impression's history once, holding the query in
// registers, instead of the 6-10 whole-tensor passes (and the (B, L, H)
// temporaries) of the eager ops. Loops are written over 8-float GCC vectors
// so the compiler emits AVX2/FMA code for them (built with -mavx2 -mfma).
// Batch rows are split over at::parallel_for, so torch.set_num_threads holds.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

typedef float v8 __attribute__((vector_size(32)));

inline v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline float hsum(v8 v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

template <int DV>
inline float dot(const float* a, const v8* q) {
  v8 acc = load8(a) * q[0];
  for (int v = 1; v < DV; ++v) acc += load8(a + 8 * v) * q[v];
  return hsum(acc);
}

// The two tiers bracketing similarity s and the upper one's share (SimTier's soft assignment).
inline void bracket(float s, int64_t T, int64_t& lower, int64_t& upper, float& frac) {
  const float x = (std::min(std::max(s, -1.0f), 1.0f) + 1.0f) * (0.5f * T) - 0.5f;
  const float low = std::floor(x);
  frac = x - low;
  const int64_t i = static_cast<int64_t>(low);
  lower = std::min(std::max(i, int64_t(0)), T - 1);
  upper = std::min(std::max(i + 1, int64_t(0)), T - 1);
}

struct History {
  const float* data;
  int64_t batch_stride, item_stride, B, L, D;
  const float* item(int64_t b, int64_t l) const { return data + b * batch_stride + l * item_stride; }
};

History history_of(const at::Tensor& h, const char* name) {
  TORCH_CHECK(h.dim() == 3 && h.scalar_type() == at::kFloat && h.stride(2) == 1 && h.device().is_cpu(), name,
              ": expected a float32 CPU tensor (B, L, D) with a contiguous last dim");
  return {h.data_ptr<float>(), h.stride(0), h.stride(1), h.size(0), h.size(1), h.size(2)};
}

void check_shape(const at::Tensor& t, at::IntArrayRef shape, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.sizes() == shape && t.scalar_type() == dtype && t.device().is_cpu(), name, ": expected shape ", shape,
              " and dtype ", dtype, " on CPU, got ", t.sizes(), " ", t.scalar_type());
}

// grad == nullptr: the tier shares (B, T) of rows [b0, b1); else the query's gradient (B, D).
template <int DV>
void tier_rows(int64_t b0, int64_t b1, const History& h, const float* query, const float* weight, int64_t T,
               const float* grad, float* out) {
  constexpr int64_t D = 8 * DV;
  const int64_t L = h.L;
  for (int64_t b = b0; b < b1; ++b) {
    const float* w = weight + b * L;
    float n = 0.f;
    for (int64_t l = 0; l < L; ++l) n += w[l];
    const float inv = 1.0f / std::max(n, 1.0f);
    v8 q[DV];
    for (int v = 0; v < DV; ++v) q[v] = load8(query + b * D + 8 * v);
    int64_t lower, upper;
    float frac;
    if (grad == nullptr) {
      float* counts = out + b * T;
      for (int64_t l = 0; l < L; ++l) {
        if (w[l] == 0.f) continue;
        bracket(dot<DV>(h.item(b, l), q), T, lower, upper, frac);
        const float share = w[l] * inv;
        counts[lower] += share - frac * share;
        counts[upper] += frac * share;
      }
    } else {
      const float* g = grad + b * T;
      const float scale = 0.5f * T * inv;
      v8 acc[DV] = {};
      for (int64_t l = 0; l < L; ++l) {
        if (w[l] == 0.f) continue;
        const float* item = h.item(b, l);
        bracket(dot<DV>(item, q), T, lower, upper, frac);
        const float gs = (g[upper] - g[lower]) * w[l] * scale;  // dL/ds; 0 where both tiers are one
        for (int v = 0; v < DV; ++v) acc[v] += gs * load8(item + 8 * v);
      }
      std::memcpy(out + b * D, acc, sizeof(acc));
    }
  }
}

at::Tensor tiers(const at::Tensor* grad, const at::Tensor& history, const at::Tensor& query, const at::Tensor& weight,
                 int64_t T) {
  const History h = history_of(history, "history");
  TORCH_CHECK(T >= 1, "T must be >= 1, got ", T);
  check_shape(query, {h.B, h.D}, at::kFloat, "query");
  check_shape(weight, {h.B, h.L}, at::kFloat, "weight");
  const at::Tensor q = query.contiguous(), w = weight.contiguous();
  at::Tensor g;
  if (grad != nullptr) {
    check_shape(*grad, {h.B, T}, at::kFloat, "grad");
    g = grad->contiguous();
  }
  at::Tensor out = at::zeros({h.B, grad != nullptr ? h.D : T}, history.options());
  const float *qp = q.data_ptr<float>(), *wp = w.data_ptr<float>(), *gp = g.defined() ? g.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  at::parallel_for(0, h.B, 64, [&](int64_t b0, int64_t b1) {
    switch (h.D) {
      case 8: tier_rows<1>(b0, b1, h, qp, wp, T, gp, op); break;
      case 16: tier_rows<2>(b0, b1, h, qp, wp, T, gp, op); break;
      case 32: tier_rows<4>(b0, b1, h, qp, wp, T, gp, op); break;
      case 64: tier_rows<8>(b0, b1, h, qp, wp, T, gp, op); break;
      default: TORCH_CHECK(false, "soft_tiers: D must be 8, 16, 32 or 64, got ", h.D);
    }
  });
  return out;
}

at::Tensor soft_tiers(const at::Tensor& history, const at::Tensor& query, const at::Tensor& weight, int64_t T) {
  return tiers(nullptr, history, query, weight, T);
}

at::Tensor soft_tiers_backward(const at::Tensor& grad, const at::Tensor& history, const at::Tensor& query,
                               const at::Tensor& weight, int64_t T) {
  return tiers(&grad, history, query, weight, T);
}

// DIN pooling of rows [b0, b1): hidden = relu(row_b + k_l per_row_b), score = w2 . hidden + b2.
template <int HV>
void pool_rows(int64_t b0, int64_t b1, const History& k, const bool* mask, const float* per_row, const float* row_term,
               const float* w2p, float b2, bool softmax, float* out) {
  constexpr int64_t H = 8 * HV;
  constexpr int R = 4;  // positions in flight: independent FMA chains
  const int64_t L = k.L, D = k.D;
  std::vector<float> scores(L);
  v8 w2[HV];
  for (int v = 0; v < HV; ++v) w2[v] = load8(w2p + 8 * v);
  const v8 zero = {};
  for (int64_t b = b0; b < b1; ++b) {
    const float* P = per_row + b * D * H;
    const bool* m = mask + b * L;
    v8 row[HV];
    for (int v = 0; v < HV; ++v) row[v] = load8(row_term + b * H + 8 * v);
    float top = -INFINITY;
    for (int64_t l = 0; l < L; l += R) {
      v8 hidden[R][HV];
      const float* item[R];
      for (int r = 0; r < R; ++r) {
        item[r] = k.item(b, std::min<int64_t>(l + r, L - 1));
        for (int v = 0; v < HV; ++v) hidden[r][v] = row[v];
      }
      for (int64_t d = 0; d < D; ++d) {
        v8 Pd[HV];
        for (int v = 0; v < HV; ++v) Pd[v] = load8(P + d * H + 8 * v);
        for (int r = 0; r < R; ++r) {
          const float kd = item[r][d];
          for (int v = 0; v < HV; ++v) hidden[r][v] += kd * Pd[v];
        }
      }
      for (int r = 0; r < R && l + r < L; ++r) {
        v8 acc = {};
        for (int v = 0; v < HV; ++v) acc += (hidden[r][v] > zero ? hidden[r][v] : zero) * w2[v];
        const float s = hsum(acc) + b2;
        scores[l + r] = m[l + r] ? s : 0.f;
        if (m[l + r]) top = std::max(top, s);
      }
    }
    if (softmax) {
      float z = 0.f;
      for (int64_t l = 0; l < L; ++l) {
        if (m[l]) {
          scores[l] = std::exp(scores[l] - top);
          z += scores[l];
        }
      }
      for (int64_t l = 0; z > 0.f && l < L; ++l) scores[l] /= z;
    }
    float* o = out + b * D;
    for (int64_t l = 0; l < L; ++l) {
      if (scores[l] == 0.f) continue;  // masked (or a zero weight)
      const float* item = k.item(b, l);
      for (int64_t d = 0; d < D; ++d) o[d] += scores[l] * item[d];
    }
  }
}

at::Tensor din_pool(const at::Tensor& keys, const at::Tensor& mask, const at::Tensor& per_row,
                    const at::Tensor& row_term, const at::Tensor& w2, const at::Tensor& b2, bool softmax) {
  const History k = history_of(keys, "keys");
  const int64_t H = per_row.dim() == 3 ? per_row.size(2) : -1;
  check_shape(mask, {k.B, k.L}, at::kBool, "mask");
  check_shape(per_row, {k.B, k.D, H}, at::kFloat, "per_row");
  check_shape(row_term, {k.B, H}, at::kFloat, "row_term");
  check_shape(w2, {H}, at::kFloat, "w2");
  check_shape(b2, {}, at::kFloat, "b2");
  const at::Tensor m = mask.contiguous(), P = per_row.contiguous(), R = row_term.contiguous(), W = w2.contiguous();
  at::Tensor out = at::zeros({k.B, k.D}, keys.options());
  const bool* mp = m.data_ptr<bool>();
  const float *pp = P.data_ptr<float>(), *rp = R.data_ptr<float>(), *wp = W.data_ptr<float>();
  const float bias = b2.item<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, k.B, 16, [&](int64_t b0, int64_t b1) {
    switch (H) {
      case 8: pool_rows<1>(b0, b1, k, mp, pp, rp, wp, bias, softmax, op); break;
      case 16: pool_rows<2>(b0, b1, k, mp, pp, rp, wp, bias, softmax, op); break;
      case 32: pool_rows<4>(b0, b1, k, mp, pp, rp, wp, bias, softmax, op); break;
      default: TORCH_CHECK(false, "din_pool: the hidden width must be 8, 16 or 32, got ", H);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(mmctr_fused, m) {
  m.def("soft_tiers(Tensor history, Tensor query, Tensor weight, int T) -> Tensor");
  m.def("soft_tiers_backward(Tensor grad, Tensor history, Tensor query, Tensor weight, int T) -> Tensor");
  m.def("din_pool(Tensor keys, Tensor mask, Tensor per_row, Tensor row_term, Tensor w2, Tensor b2, bool softmax) -> Tensor");
}

TORCH_LIBRARY_IMPL(mmctr_fused, CPU, m) {
  m.impl("soft_tiers", soft_tiers);
  m.impl("soft_tiers_backward", soft_tiers_backward);
  m.impl("din_pool", din_pool);
}
