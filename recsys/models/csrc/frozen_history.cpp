// Fused CPU kernels for the passes over a history: SimTier's over the frozen multimodal history, and
// DIN's target attention over it or over the ID model's trained embeddings (see recsys/models/fused.py).
//
// Notation: B batch, L padded history length, D vector width (8 * DV), T tiers,
// H width of the attention unit's one hidden layer (8 * HV).
//
// Each kernel walks an impression's history once, holding the query in
// registers, instead of the 6-10 whole-tensor passes (and the several (B, L, H)
// temporaries) of the eager ops; a trained attention keeps one (B, L, H)
// tensor, its pre-activations, for its backward. The attention kernels visit
// only unmasked positions; their backward gives the gradients of the query
// and of the unit's weights, the weights' summed per range of batch rows, and,
// asked (keys_grad: the ID model's embeddings), of the keys; a frozen history
// needs none. Loops are written over 8-float GCC
// vectors so the compiler emits AVX2/FMA code for them (built with -mavx2 -mfma).
// Batch rows are split over at::parallel_for, so torch.set_num_threads holds.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
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

// The one tier of similarity s (SimTier's hard assignment, as the eager ops: floor((s + 1) T / 2), last tier for 1.0).
inline int64_t hard_tier(float s, int64_t T) {
  const int64_t i = static_cast<int64_t>(std::floor((std::min(std::max(s, -1.0f), 1.0f) + 1.0f) * (0.5f * T)));
  return std::min(std::max(i, int64_t(0)), T - 1);
}

// hard: the hard tier shares (B, T) of rows [b0, b1) (grad unused). Else grad == nullptr: the soft
// tier shares (B, T); else the soft tiers' query gradient (B, D).
template <int DV>
void tier_rows(int64_t b0, int64_t b1, const History& h, const float* query, const float* weight, int64_t T,
               bool hard, const float* grad, float* out) {
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
    if (hard) {
      float* counts = out + b * T;
      for (int64_t l = 0; l < L; ++l) {
        if (w[l] != 0.f) counts[hard_tier(dot<DV>(h.item(b, l), q), T)] += w[l] * inv;
      }
    } else if (grad == nullptr) {
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

at::Tensor tiers(bool hard, const at::Tensor* grad, const at::Tensor& history, const at::Tensor& query,
                 const at::Tensor& weight, int64_t T) {
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
      case 8: tier_rows<1>(b0, b1, h, qp, wp, T, hard, gp, op); break;
      case 16: tier_rows<2>(b0, b1, h, qp, wp, T, hard, gp, op); break;
      case 32: tier_rows<4>(b0, b1, h, qp, wp, T, hard, gp, op); break;
      case 64: tier_rows<8>(b0, b1, h, qp, wp, T, hard, gp, op); break;
      default: TORCH_CHECK(false, "tiers: D must be 8, 16, 32 or 64, got ", h.D);
    }
  });
  return out;
}

at::Tensor soft_tiers(const at::Tensor& history, const at::Tensor& query, const at::Tensor& weight, int64_t T) {
  return tiers(false, nullptr, history, query, weight, T);
}

at::Tensor hard_tiers(const at::Tensor& history, const at::Tensor& query, const at::Tensor& weight, int64_t T) {
  return tiers(true, nullptr, history, query, weight, T);
}

at::Tensor soft_tiers_backward(const at::Tensor& grad, const at::Tensor& history, const at::Tensor& query,
                               const at::Tensor& weight, int64_t T) {
  return tiers(false, &grad, history, query, weight, T);
}

// The unmasked positions of impression b's history into pos; returns their count n.
inline int64_t unmasked(int64_t b, int64_t L, const bool* mask, int64_t* pos) {
  int64_t n = 0;
  for (int64_t l = 0; l < L; ++l) {
    if (mask[b * L + l]) pos[n++] = l;
  }
  return n;
}

// DIN's activation unit with one hidden layer, for the unmasked positions of impression b:
// hidden_l = row_b + k_l P_b (pre-activation, H wide), P_b = A + diag(q_b) Wp the first layer's
// per-row key matrix (D, H), built here from the query instead of read from a (B, D, H) tensor.
// Writes the positions to pos[0..n) and their pre-activations to hid[n][H]; returns n.
template <int HV>
int64_t unit_hidden(int64_t b, const History& k, const bool* mask, const float* query, const float* A,
                    const float* Wp, const float* row_term, float* P, int64_t* pos, float* hid) {
  constexpr int64_t H = 8 * HV;
  constexpr int R = 8 / HV;  // positions in flight: R * HV accumulators + HV of P stay in the 16 AVX2 registers
  const int64_t L = k.L, D = k.D;
  const float* q = query + b * D;
  for (int64_t d = 0; d < D; ++d) {
    for (int v = 0; v < HV; ++v) {
      const v8 p = load8(A + d * H + 8 * v) + q[d] * load8(Wp + d * H + 8 * v);
      std::memcpy(P + d * H + 8 * v, &p, sizeof(p));
    }
  }
  const int64_t n = unmasked(b, L, mask, pos);
  v8 row[HV];
  for (int v = 0; v < HV; ++v) row[v] = load8(row_term + b * H + 8 * v);
  for (int64_t i = 0; i < n; i += R) {
    v8 hidden[R][HV];
    const float* item[R];
    for (int r = 0; r < R; ++r) {
      item[r] = k.item(b, pos[std::min<int64_t>(i + r, n - 1)]);
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
    for (int r = 0; r < R && i + r < n; ++r) std::memcpy(hid + (i + r) * H, hidden[r], sizeof(hidden[r]));
  }
  return n;
}

// The weights of the n unmasked positions from their pre-activations: w2 . relu(hidden) + b2, or
// its softmax over the n positions.
template <int HV>
void unit_weights(int64_t n, const float* hid, const v8* w2, float b2, bool softmax, float* weights) {
  constexpr int64_t H = 8 * HV;
  const v8 zero = {};
  float top = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    v8 acc = {};
    for (int v = 0; v < HV; ++v) {
      const v8 h = load8(hid + i * H + 8 * v);
      acc += (h > zero ? h : zero) * w2[v];
    }
    weights[i] = hsum(acc) + b2;
    top = std::max(top, weights[i]);
  }
  if (!softmax) return;
  float z = 0.f;
  for (int64_t i = 0; i < n; ++i) z += (weights[i] = std::exp(weights[i] - top));
  for (int64_t i = 0; i < n; ++i) weights[i] /= z;
}

struct Unit {  // the activation unit's tensors, raw (contiguous float32)
  const float *query, *A, *Wp, *row_term, *w2;
  float b2;
  bool softmax;
};

// Forward of rows [b0, b1): out_b = sum over unmasked l of weight_l k_l. With keep (B, L, H), the
// pre-activations of impression b's n unmasked positions are left in its first n rows for the backward.
template <int HV>
void attention_rows(int64_t b0, int64_t b1, const History& k, const bool* mask, const Unit& u, float* out,
                    float* keep) {
  constexpr int64_t H = 8 * HV;
  const int64_t L = k.L, D = k.D;
  std::vector<float> P(D * H), local(keep == nullptr ? L * H : 0), weights(L);
  std::vector<int64_t> pos(L);
  v8 w2[HV];
  for (int v = 0; v < HV; ++v) w2[v] = load8(u.w2 + 8 * v);
  for (int64_t b = b0; b < b1; ++b) {
    float* hid = keep == nullptr ? local.data() : keep + b * L * H;
    const int64_t n = unit_hidden<HV>(b, k, mask, u.query, u.A, u.Wp, u.row_term, P.data(), pos.data(), hid);
    unit_weights<HV>(n, hid, w2, u.b2, u.softmax, weights.data());
    float* o = out + b * D;
    for (int64_t i = 0; i < n; ++i) {
      const float* item = k.item(b, pos[i]);
      for (int64_t d = 0; d < D; ++d) o[d] += weights[i] * item[d];
    }
  }
}

// Per-thread sums of the shared parameters' gradients: A and Wp (D, H), w2 (H), b2.
struct UnitGrads {
  float *A, *Wp, *w2, *b2;
};

// Rows [d, d + DD) of G = sum_i k_i (x) gh_i (gh: dL/dhidden of the n positions, (n, H)), the
// gradient of impression b's per-row key matrix P_b = A + diag(q_b) Wp, added to dA and dWp; also
// dq_b[d] = Wp[d] . G[d].
template <int HV, int DD>
inline void grad_key_rows(int64_t d, int64_t n, int64_t b, const History& k, const int64_t* pos, const float* gh,
                          const float* q, const float* Wp, float* grad_query, const UnitGrads& g) {
  constexpr int64_t H = 8 * HV;
  const int64_t D = k.D;
  v8 acc[DD][HV] = {};
  for (int64_t i = 0; i < n; ++i) {
    const float* item = k.item(b, pos[i]) + d;
    v8 x[HV];
    for (int v = 0; v < HV; ++v) x[v] = load8(gh + i * H + 8 * v);
    for (int r = 0; r < DD; ++r) {
      const float kd = item[r];
      for (int v = 0; v < HV; ++v) acc[r][v] += kd * x[v];
    }
  }
  for (int r = 0; r < DD; ++r) {
    const int64_t row = (d + r) * H;
    v8 gq = {};
    for (int v = 0; v < HV; ++v) {
      const v8 a = load8(g.A + row + 8 * v) + acc[r][v], p = load8(g.Wp + row + 8 * v) + q[d + r] * acc[r][v];
      std::memcpy(g.A + row + 8 * v, &a, sizeof(a));
      std::memcpy(g.Wp + row + 8 * v, &p, sizeof(p));
      gq += load8(Wp + row + 8 * v) * acc[r][v];
    }
    grad_query[b * D + d + r] = hsum(gq);
  }
}

// The keys' gradient of impression b's n unmasked positions into grad_keys (B, L, D):
// dk_i = weight_i dL/dout_b + P_b dL/dhidden_i, P_b = A + diag(q_b) Wp, built transposed (H, D) in PT.
// DV > 0: D = 8 * DV, dk_i held in registers, summed over h in two interleaved halves; DV = 0: any D.
template <int HV, int DV>
void key_grads(int64_t b, int64_t n, int64_t L, int64_t D, const int64_t* pos, const float* weights, const float* go,
               const float* gh, const float* q, const Unit& u, float* PT, float* grad_keys) {
  constexpr int64_t H = 8 * HV;
  for (int64_t d = 0; d < D; ++d) {
    for (int64_t h = 0; h < H; ++h) PT[h * D + d] = u.A[d * H + h] + q[d] * u.Wp[d * H + h];
  }
  for (int64_t i = 0; i < n; ++i) {
    const float* x = gh + i * H;
    float* dk = grad_keys + (b * L + pos[i]) * D;
    if constexpr (DV > 0) {
      v8 even[DV], odd[DV];
      for (int v = 0; v < DV; ++v) {
        even[v] = weights[i] * load8(go + 8 * v);
        odd[v] = v8{};
      }
      for (int64_t h = 0; h < H; h += 2) {
        for (int v = 0; v < DV; ++v) {
          even[v] += x[h] * load8(PT + h * D + 8 * v);
          odd[v] += x[h + 1] * load8(PT + (h + 1) * D + 8 * v);
        }
      }
      for (int v = 0; v < DV; ++v) {
        const v8 sum = even[v] + odd[v];
        std::memcpy(dk + 8 * v, &sum, sizeof(sum));
      }
    } else {
      for (int64_t d = 0; d < D; ++d) dk[d] = weights[i] * go[d];
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t d = 0; d < D; ++d) dk[d] += x[h] * PT[h * D + d];
      }
    }
  }
}

// Backward of rows [b0, b1): the gradients of query (through P_b only; row_term's own path is
// autograd's), row_term (B, H), and the sums of A, Wp, w2, b2, from the unit's pre-activations the
// forward kept (hidden, see attention_rows). With grad_keys (B, L, D, zeros), also the keys' gradient
// at the unmasked positions: dk_i = weight_i dL/dout + P_b dL/dhidden_i (the ID model's attention,
// whose keys are trained embeddings).
template <int HV>
void attention_grad_rows(int64_t b0, int64_t b1, const History& k, const bool* mask, const Unit& u,
                         const float* hidden, const float* grad, float* grad_query, float* grad_row,
                         const UnitGrads& g, float* grad_keys) {
  constexpr int64_t H = 8 * HV;
  constexpr int R = 8 / HV;  // as in unit_hidden: R * HV + HV registers
  const int64_t L = k.L, D = k.D;
  std::vector<float> gh_rows(L * H), weights(L), gw(L), P(grad_keys == nullptr ? 0 : D * H);
  std::vector<int64_t> pos(L);
  v8 w2[HV];
  for (int v = 0; v < HV; ++v) w2[v] = load8(u.w2 + 8 * v);
  const v8 zero = {};
  float* const gh_data = gh_rows.data();
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t n = unmasked(b, L, mask, pos.data());
    const float* hid = hidden + b * L * H;
    if (n == 0) continue;  // an empty history: every gradient of this row is 0
    unit_weights<HV>(n, hid, w2, u.b2, u.softmax, weights.data());
    const float* go = grad + b * D;
    float mean = 0.f;  // softmax: sum_j weight_j dL/dweight_j
    for (int64_t i = 0; i < n; ++i) {
      const float* item = k.item(b, pos[i]);
      float s = 0.f;
      for (int64_t d = 0; d < D; ++d) s += go[d] * item[d];
      gw[i] = s;  // dL/dweight_i
      mean += weights[i] * s;
    }
    // dL/dscore_i, then dL/dhidden_i
    v8 row_acc[HV] = {}, w2_acc[HV] = {};
    float b2_acc = 0.f;
    for (int64_t i = 0; i < n; ++i) {
      const float gs = u.softmax ? weights[i] * (gw[i] - mean) : gw[i];
      b2_acc += gs;
      for (int v = 0; v < HV; ++v) {
        const v8 h = load8(hid + i * H + 8 * v);
        const v8 gh = h > zero ? gs * w2[v] : zero;
        w2_acc[v] += gs * (h > zero ? h : zero);
        row_acc[v] += gh;
        std::memcpy(gh_data + i * H + 8 * v, &gh, sizeof(gh));
      }
    }
    std::memcpy(grad_row + b * H, row_acc, sizeof(row_acc));
    for (int v = 0; v < HV; ++v) {
      const v8 w = load8(g.w2 + 8 * v) + w2_acc[v];
      std::memcpy(g.w2 + 8 * v, &w, sizeof(w));
    }
    *g.b2 += b2_acc;
    // G = sum_i k_i (x) dL/dhidden_i, the gradient of P_b (D, H), DD rows at a time held in registers;
    // then P_b = A + diag(q_b) Wp gives dA += G, dWp += diag(q_b) G, dq_b[d] = Wp[d] . G[d]
    const float* q = u.query + b * D;
    int64_t d = 0;
    for (; d + R <= D; d += R) grad_key_rows<HV, R>(d, n, b, k, pos.data(), gh_data, q, u.Wp, grad_query, g);
    for (; d < D; ++d) grad_key_rows<HV, 1>(d, n, b, k, pos.data(), gh_data, q, u.Wp, grad_query, g);
    if (grad_keys != nullptr) {
      const int64_t* p = pos.data();
      switch (D) {
        case 8: key_grads<HV, 1>(b, n, L, D, p, weights.data(), go, gh_data, q, u, P.data(), grad_keys); break;
        case 16: key_grads<HV, 2>(b, n, L, D, p, weights.data(), go, gh_data, q, u, P.data(), grad_keys); break;
        case 32: key_grads<HV, 4>(b, n, L, D, p, weights.data(), go, gh_data, q, u, P.data(), grad_keys); break;
        case 64: key_grads<HV, 8>(b, n, L, D, p, weights.data(), go, gh_data, q, u, P.data(), grad_keys); break;
        default: key_grads<HV, 0>(b, n, L, D, p, weights.data(), go, gh_data, q, u, P.data(), grad_keys); break;
      }
    }
  }
}

struct AttentionArgs {
  History k;
  at::Tensor mask, query, A, Wp, row_term, w2;
  Unit unit;
  int64_t H;
};

AttentionArgs attention_args(const at::Tensor& keys, const at::Tensor& mask, const at::Tensor& query,
                             const at::Tensor& key_weight, const at::Tensor& product_weight,
                             const at::Tensor& row_term, const at::Tensor& w2, const at::Tensor& b2, bool softmax) {
  AttentionArgs a;
  a.k = history_of(keys, "keys");
  a.H = w2.dim() == 1 ? w2.size(0) : -1;
  TORCH_CHECK(a.H == 8 || a.H == 16 || a.H == 32, "din_attention: the hidden width must be 8, 16 or 32, got ", a.H);
  check_shape(mask, {a.k.B, a.k.L}, at::kBool, "mask");
  check_shape(query, {a.k.B, a.k.D}, at::kFloat, "query");
  check_shape(key_weight, {a.k.D, a.H}, at::kFloat, "key_weight");
  check_shape(product_weight, {a.k.D, a.H}, at::kFloat, "product_weight");
  check_shape(row_term, {a.k.B, a.H}, at::kFloat, "row_term");
  check_shape(b2, {}, at::kFloat, "b2");
  a.mask = mask.contiguous();
  a.query = query.contiguous();
  a.A = key_weight.contiguous();
  a.Wp = product_weight.contiguous();
  a.row_term = row_term.contiguous();
  a.w2 = w2.contiguous();
  a.unit = {a.query.data_ptr<float>(), a.A.data_ptr<float>(), a.Wp.data_ptr<float>(), a.row_term.data_ptr<float>(),
            a.w2.data_ptr<float>(), b2.item<float>(), softmax};
  return a;
}

// The pooled history (B, D) and, with keep_hidden, the unit's pre-activations for the backward
// (B, L, H; impression b's n unmasked positions in its first n rows, the rest unset); else (0,).
std::tuple<at::Tensor, at::Tensor> din_attention(const at::Tensor& keys, const at::Tensor& mask,
                                                 const at::Tensor& query, const at::Tensor& key_weight,
                                                 const at::Tensor& product_weight, const at::Tensor& row_term,
                                                 const at::Tensor& w2, const at::Tensor& b2, bool softmax,
                                                 bool keep_hidden) {
  const AttentionArgs a = attention_args(keys, mask, query, key_weight, product_weight, row_term, w2, b2, softmax);
  at::Tensor out = at::zeros({a.k.B, a.k.D}, keys.options());
  at::Tensor hidden = keep_hidden ? at::empty({a.k.B, a.k.L, a.H}, keys.options()) : at::empty({0}, keys.options());
  const bool* mp = a.mask.data_ptr<bool>();
  float *op = out.data_ptr<float>(), *hp = keep_hidden ? hidden.data_ptr<float>() : nullptr;
  at::parallel_for(0, a.k.B, 16, [&](int64_t b0, int64_t b1) {
    switch (a.H) {
      case 8: attention_rows<1>(b0, b1, a.k, mp, a.unit, op, hp); break;
      case 16: attention_rows<2>(b0, b1, a.k, mp, a.unit, op, hp); break;
      default: attention_rows<4>(b0, b1, a.k, mp, a.unit, op, hp); break;
    }
  });
  return {out, hidden};
}

// hidden: din_attention's kept pre-activations (B, L, H) (keep_hidden). keys_grad: also the keys'
// gradient (B, L, D; zeros at masked positions), else an empty (0,) tensor in its place.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> din_attention_backward(
    const at::Tensor& grad, const at::Tensor& hidden, const at::Tensor& keys, const at::Tensor& mask,
    const at::Tensor& query, const at::Tensor& key_weight, const at::Tensor& product_weight, const at::Tensor& row_term,
    const at::Tensor& w2, const at::Tensor& b2, bool softmax, bool keys_grad) {
  const AttentionArgs a = attention_args(keys, mask, query, key_weight, product_weight, row_term, w2, b2, softmax);
  const int64_t B = a.k.B, D = a.k.D, H = a.H;
  check_shape(grad, {B, D}, at::kFloat, "grad");
  check_shape(hidden, {B, a.k.L, H}, at::kFloat, "hidden (din_attention's, run with keep_hidden)");
  const at::Tensor go = grad.contiguous(), hid = hidden.contiguous();
  const float* kp = hid.data_ptr<float>();
  at::Tensor grad_query = at::zeros({B, D}, keys.options()), grad_row = at::zeros({B, H}, keys.options());
  at::Tensor grad_keys = keys_grad ? at::zeros({B, a.k.L, D}, keys.options()) : at::empty({0}, keys.options());
  float* gk = keys_grad ? grad_keys.data_ptr<float>() : nullptr;
  // the rows in `parts` contiguous ranges, each summing the shared parameters' gradients into its own
  // slot [A (D*H) | Wp (D*H) | w2 (H) | b2 (1)], the slots summed after: no two threads write one slot,
  // and the same B and thread count give the same sums in the same order
  const int64_t width = 2 * D * H + H + 1;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (B + 15) / 16));
  at::Tensor sums = at::zeros({parts, width}, keys.options());
  const bool* mp = a.mask.data_ptr<bool>();
  const float* gp = go.data_ptr<float>();
  float *gq = grad_query.data_ptr<float>(), *gr = grad_row.data_ptr<float>(), *sp = sums.data_ptr<float>();
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      float* slot = sp + p * width;
      const UnitGrads g{slot, slot + D * H, slot + 2 * D * H, slot + 2 * D * H + H};
      const int64_t b0 = B * p / parts, b1 = B * (p + 1) / parts;
      switch (H) {
        case 8: attention_grad_rows<1>(b0, b1, a.k, mp, a.unit, kp, gp, gq, gr, g, gk); break;
        case 16: attention_grad_rows<2>(b0, b1, a.k, mp, a.unit, kp, gp, gq, gr, g, gk); break;
        default: attention_grad_rows<4>(b0, b1, a.k, mp, a.unit, kp, gp, gq, gr, g, gk); break;
      }
    }
  });
  const at::Tensor total = sums.sum(0);
  return {grad_keys, grad_query, grad_row, total.narrow(0, 0, D * H).view({D, H}),
          total.narrow(0, D * H, D * H).view({D, H}), total.narrow(0, 2 * D * H, H),
          total.narrow(0, 2 * D * H + H, 1).squeeze(0)};
}

// Bilinear target attention over the unmasked positions of rows [b0, b1): score_i = k_i . u_b + bias
// (u = q W, computed outside), weight_i = score_i or its softmax over the row's positions, out_b =
// sum_i weight_i k_i. grad == nullptr: the forward, into out (B, D). Else the backward from grad =
// dL/dout (B, D): dL/du_b = sum_i dL/dscore_i k_i into out (B, D), and sum_i dL/dscore_i (the bias's
// gradient) into bias_grad[b]. The keys take no gradient (a frozen history). DV > 0: D = 8 * DV.
template <int DV>
void bilinear_rows(int64_t b0, int64_t b1, const History& k, const bool* mask, const float* u, float bias,
                   bool softmax, const float* grad, float* out, float* bias_grad) {
  const int64_t L = k.L, D = k.D;
  std::vector<float> scores(L), gw(L);
  std::vector<int64_t> pos(L);
  std::vector<float> acc_buf(D);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t n = unmasked(b, L, mask, pos.data());
    if (n == 0) continue;  // an empty history: output and gradients 0
    const float* ub = u + b * D;
    v8 q[DV > 0 ? DV : 1];  // the row's u in registers (DV > 0)
    if constexpr (DV > 0) {
      for (int v = 0; v < DV; ++v) q[v] = load8(ub + 8 * v);
    }
    float top = -INFINITY;
    for (int64_t i = 0; i < n; ++i) {
      const float* item = k.item(b, pos[i]);
      float s = 0.f;
      if constexpr (DV > 0) {
        s = dot<DV>(item, q);
      } else {
        for (int64_t d = 0; d < D; ++d) s += item[d] * ub[d];
      }
      scores[i] = s + bias;
      top = std::max(top, scores[i]);
    }
    if (softmax) {
      float z = 0.f;
      for (int64_t i = 0; i < n; ++i) z += (scores[i] = std::exp(scores[i] - top));
      for (int64_t i = 0; i < n; ++i) scores[i] /= z;
    }
    // scores now hold the weights
    const float* go = grad == nullptr ? nullptr : grad + b * D;
    float mean = 0.f;  // softmax: sum_j weight_j dL/dweight_j
    if (go != nullptr) {
      for (int64_t i = 0; i < n; ++i) {
        const float* item = k.item(b, pos[i]);
        float s = 0.f;
        for (int64_t d = 0; d < D; ++d) s += go[d] * item[d];
        gw[i] = s;  // dL/dweight_i
        mean += scores[i] * s;
      }
    }
    float* acc = acc_buf.data();
    std::fill(acc, acc + D, 0.f);
    float gbias = 0.f;
    for (int64_t i = 0; i < n; ++i) {
      // forward: weight_i; backward: dL/dscore_i
      const float c = go == nullptr ? scores[i] : (softmax ? scores[i] * (gw[i] - mean) : gw[i]);
      gbias += c;
      const float* item = k.item(b, pos[i]);
      for (int64_t d = 0; d < D; ++d) acc[d] += c * item[d];
    }
    std::memcpy(out + b * D, acc, D * sizeof(float));
    if (bias_grad != nullptr) bias_grad[b] = gbias;
  }
}

at::Tensor bilinear_pass(const at::Tensor* grad, const at::Tensor& keys, const at::Tensor& mask,
                         const at::Tensor& u, const at::Tensor& bias, bool softmax, at::Tensor* bias_grad) {
  const History k = history_of(keys, "keys");
  check_shape(mask, {k.B, k.L}, at::kBool, "mask");
  check_shape(u, {k.B, k.D}, at::kFloat, "query_projection");
  check_shape(bias, {}, at::kFloat, "bias");
  const at::Tensor m = mask.contiguous(), uc = u.contiguous();
  at::Tensor go;
  if (grad != nullptr) {
    check_shape(*grad, {k.B, k.D}, at::kFloat, "grad");
    go = grad->contiguous();
  }
  at::Tensor out = at::zeros({k.B, k.D}, keys.options());
  const bool* mp = m.data_ptr<bool>();
  const float *up = uc.data_ptr<float>(), *gp = grad == nullptr ? nullptr : go.data_ptr<float>();
  float *op = out.data_ptr<float>(), *bp = bias_grad == nullptr ? nullptr : bias_grad->data_ptr<float>();
  const float b = bias.item<float>();
  at::parallel_for(0, k.B, 16, [&](int64_t b0, int64_t b1) {
    switch (k.D) {
      case 8: bilinear_rows<1>(b0, b1, k, mp, up, b, softmax, gp, op, bp); break;
      case 16: bilinear_rows<2>(b0, b1, k, mp, up, b, softmax, gp, op, bp); break;
      case 32: bilinear_rows<4>(b0, b1, k, mp, up, b, softmax, gp, op, bp); break;
      case 64: bilinear_rows<8>(b0, b1, k, mp, up, b, softmax, gp, op, bp); break;
      default: bilinear_rows<0>(b0, b1, k, mp, up, b, softmax, gp, op, bp); break;
    }
  });
  return out;
}

// The pooled history (B, D) of the bilinear target attention (bilinear_rows).
at::Tensor bilinear_attention(const at::Tensor& keys, const at::Tensor& mask, const at::Tensor& query_projection,
                              const at::Tensor& bias, bool softmax) {
  return bilinear_pass(nullptr, keys, mask, query_projection, bias, softmax, nullptr);
}

// The gradients of query_projection (B, D) and of bias (a scalar) from grad = dL/dout (B, D).
std::tuple<at::Tensor, at::Tensor> bilinear_attention_backward(const at::Tensor& grad, const at::Tensor& keys,
                                                               const at::Tensor& mask,
                                                               const at::Tensor& query_projection,
                                                               const at::Tensor& bias, bool softmax) {
  at::Tensor per_row = at::zeros({keys.size(0)}, keys.options());
  at::Tensor grad_u = bilinear_pass(&grad, keys, mask, query_projection, bias, softmax, &per_row);
  return {grad_u, per_row.sum()};
}

}  // namespace

TORCH_LIBRARY(mmctr_fused, m) {
  m.def("soft_tiers(Tensor history, Tensor query, Tensor weight, int T) -> Tensor");
  m.def("hard_tiers(Tensor history, Tensor query, Tensor weight, int T) -> Tensor");
  m.def("soft_tiers_backward(Tensor grad, Tensor history, Tensor query, Tensor weight, int T) -> Tensor");
  m.def(
      "din_attention(Tensor keys, Tensor mask, Tensor query, Tensor key_weight, Tensor product_weight, "
      "Tensor row_term, Tensor w2, Tensor b2, bool softmax, bool keep_hidden) -> (Tensor, Tensor)");
  m.def(
      "din_attention_backward(Tensor grad, Tensor hidden, Tensor keys, Tensor mask, Tensor query, Tensor key_weight, "
      "Tensor product_weight, Tensor row_term, Tensor w2, Tensor b2, bool softmax, bool keys_grad) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("bilinear_attention(Tensor keys, Tensor mask, Tensor query_projection, Tensor bias, bool softmax) -> Tensor");
  m.def(
      "bilinear_attention_backward(Tensor grad, Tensor keys, Tensor mask, Tensor query_projection, Tensor bias, "
      "bool softmax) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mmctr_fused, CPU, m) {
  m.impl("soft_tiers", soft_tiers);
  m.impl("hard_tiers", hard_tiers);
  m.impl("soft_tiers_backward", soft_tiers_backward);
  m.impl("din_attention", din_attention);
  m.impl("din_attention_backward", din_attention_backward);
  m.impl("bilinear_attention", bilinear_attention);
  m.impl("bilinear_attention_backward", bilinear_attention_backward);
}
