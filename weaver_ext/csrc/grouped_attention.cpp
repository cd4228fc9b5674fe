// Fused fp32 attention per (jet, head) of the packed layout (weaver_ext/packed.py, weaver_ext/native.py).
//
// For every jet of every group: softmax(scale q k^T + bias) v at the group's length, read in place from the strided
// q, k, v rows and the flat bias, written in place to the output rows. Scores, bias and softmax stay in registers
// and L1, so nothing of size (jets, heads, L, L) is written back; torch's bmm path writes the scores three times.
// Built by weaver_ext/native.py with the system C++ compiler for this CPU. Vectors are GCC vector extensions of 16
// floats: one AVX-512 register, or two AVX2 ones.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kWidth = 16;
constexpr int64_t kMaxBlocks = 8;  // keys per jet up to 128; longer groups take the bmm path (native.py checks)
constexpr int64_t kMaxLength = kWidth * kMaxBlocks;
constexpr int64_t kMaxHeadDim = 64;

typedef float Vec16 __attribute__((vector_size(64)));
typedef int32_t Int16 __attribute__((vector_size(64)));

inline Vec16 load16(const float* p) {
  Vec16 x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}

inline void store16(float* p, Vec16 x) { std::memcpy(p, &x, sizeof(x)); }

inline Vec16 splat(float x) { return Vec16{} + x; }

// exp(x) to about 2 ulp: 2^n e^r with |r| <= ln2/2 and a degree-7 polynomial. x is clamped at -87, so a key at
// -inf (padding) weighs about 1e-38 instead of 0. No -ffast-math at build time: the rounding step must stay.
inline Vec16 exp16(Vec16 x) {
  x = x < -87.0f ? splat(-87.0f) : x;
  const Vec16 shifter = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const Vec16 n = (x * 1.44269504088896341f + shifter) - shifter;
  const Vec16 r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  Vec16 p = splat(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const Int16 bits = (__builtin_convertvector(n, Int16) + 127) << 23;
  Vec16 two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}

struct Strides {
  int64_t row;   // between consecutive packed rows
  int64_t head;  // between heads of one row
};

struct Task {
  int64_t first, jet, length, pair_row, particles;  // pair_row: the jet's first row of pair terms
};

struct PairTerms {
  const float* terms;  // (P, heads) pair embedding of the real pairs i >= j, or null (no pair embedding)
  int64_t heads;
  bool self_pairs;  // i = j pairs have terms (else bias 0)
};

// The jet's bias for every head, (heads, length, padded) rows: pair terms of real pairs (one contiguous read of all
// heads per pair), 0 for a padded query, -inf for padded keys and the vector padding, except in a jet without
// particles (0 on its keys).
void bias_tile(const Task& t, const PairTerms& p, int64_t padded, float* tile) {
  const int64_t real = t.particles, length = t.length, heads = p.heads;
  const float pad_key = real > 0 ? -INFINITY : 0.0f;
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < length; ++i) {
      float* row = tile + (h * length + i) * padded;
      for (int64_t j = 0; j < real; ++j) row[j] = 0.0f;
      for (int64_t j = real; j < padded; ++j) row[j] = j < length ? pad_key : -INFINITY;
    }
  }
  if (p.terms == nullptr) return;
  const int64_t plane = length * padded;
  int64_t pair = t.pair_row;
  for (int64_t i = 0; i < real; ++i) {
    for (int64_t j = 0; j < (p.self_pairs ? i + 1 : i); ++j, ++pair) {
      const float* terms = p.terms + pair * heads;
      float* ij = tile + i * padded + j;
      float* ji = tile + j * padded + i;
      for (int64_t h = 0; h < heads; ++h) ij[h * plane] = ji[h * plane] = terms[h];
    }
  }
}

// Scores of ROWS query rows against BLOCKS blocks of 16 keys: every accumulator stays in a register, and two rows
// give twice the independent FMA chains (one row alone waits on the FMA latency).
template <int ROWS, int BLOCKS>
void score_rows(const float* const* qi, const float* keys_t, int64_t dim, float scale, Vec16 (*s)[kMaxBlocks]) {
  Vec16 acc[ROWS][BLOCKS] = {};
  for (int64_t d = 0; d < dim; ++d) {
    for (int b = 0; b < BLOCKS; ++b) {
      const Vec16 key = load16(keys_t + d * kMaxLength + b * kWidth);
      for (int r = 0; r < ROWS; ++r) acc[r][b] += splat(qi[r][d] * scale) * key;
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int b = 0; b < BLOCKS; ++b) s[r][b] = acc[r][b];
}

template <int ROWS>
void score_rows_any(int blocks, const float* const* qi, const float* keys_t, int64_t dim, float scale,
                    Vec16 (*s)[kMaxBlocks]) {
  switch (blocks) {
    case 1: score_rows<ROWS, 1>(qi, keys_t, dim, scale, s); break;
    case 2: score_rows<ROWS, 2>(qi, keys_t, dim, scale, s); break;
    case 3: score_rows<ROWS, 3>(qi, keys_t, dim, scale, s); break;
    case 4: score_rows<ROWS, 4>(qi, keys_t, dim, scale, s); break;
    case 5: score_rows<ROWS, 5>(qi, keys_t, dim, scale, s); break;
    case 6: score_rows<ROWS, 6>(qi, keys_t, dim, scale, s); break;
    case 7: score_rows<ROWS, 7>(qi, keys_t, dim, scale, s); break;
    default: score_rows<ROWS, 8>(qi, keys_t, dim, scale, s); break;
  }
}

// Softmax of one row of scores plus its bias, into `weights`; returns 1 / (sum of the exponentials).
float softmax_row(Vec16* s, const float* bias_row, int blocks, float* weights) {
  Vec16 top = splat(-INFINITY);
  for (int b = 0; b < blocks; ++b) {
    s[b] += load16(bias_row + b * kWidth);
    top = s[b] > top ? s[b] : top;
  }
  float m = top[0];
  for (int l = 1; l < kWidth; ++l) m = top[l] > m ? top[l] : m;
  Vec16 sum = {};
  for (int b = 0; b < blocks; ++b) {
    s[b] = exp16(s[b] - m);
    sum += s[b];
    store16(weights + b * kWidth, s[b]);
  }
  float total = 0.0f;
  for (int l = 0; l < kWidth; ++l) total += sum[l];
  return 1.0f / total;
}

// out_r = norm_r * sum_j w_r[j] v[j] for ROWS rows at once (each v row loaded once for all of them), the head dim
// in pieces of 16, two independent accumulator chains per row.
template <int ROWS>
void weighted_sums(const float (*w)[kMaxLength], const float* norm, const float* v, int64_t v_row, int64_t length,
                   int64_t dim, float* const* out) {
  for (int64_t d0 = 0; d0 < dim; d0 += kWidth) {
    Vec16 acc[ROWS][2] = {};
    int64_t j = 0;
    for (; j + 2 <= length; j += 2) {
      const Vec16 v0 = load16(v + j * v_row + d0), v1 = load16(v + (j + 1) * v_row + d0);
      for (int r = 0; r < ROWS; ++r) {
        acc[r][0] += w[r][j] * v0;
        acc[r][1] += w[r][j + 1] * v1;
      }
    }
    if (j < length) {
      const Vec16 v0 = load16(v + j * v_row + d0);
      for (int r = 0; r < ROWS; ++r) acc[r][0] += w[r][j] * v0;
    }
    for (int r = 0; r < ROWS; ++r) store16(out[r] + d0, (acc[r][0] + acc[r][1]) * norm[r]);
  }
}

void attend_head(const Task& t, int64_t head, const float* q, Strides sq, const float* k, Strides sk,
                 const float* v, Strides sv, const float* bias, float* out, Strides so, int64_t dim, float scale) {
  alignas(64) float keys_t[kMaxHeadDim * kMaxLength];  // (dim, 128): k transposed, zero past the length
  alignas(64) float weights[2][kMaxLength];
  const int64_t length = t.length, row0 = t.first + t.jet * length;
  const int blocks = static_cast<int>((length + kWidth - 1) / kWidth);
  const int64_t padded = blocks * kWidth;
  for (int64_t d = 0; d < dim; ++d)
    for (int64_t j = length; j < padded; ++j) keys_t[d * kMaxLength + j] = 0.0f;
  for (int64_t j = 0; j < length; ++j) {
    const float* kj = k + (row0 + j) * sk.row + head * sk.head;
    for (int64_t d = 0; d < dim; ++d) keys_t[d * kMaxLength + j] = kj[d];
  }
  const float* v_head = v + row0 * sv.row + head * sv.head;
  for (int64_t i = 0; i < length; i += 2) {
    const int rows = i + 1 < length ? 2 : 1;
    const float* q_row = q + (row0 + i) * sq.row + head * sq.head;
    const float* qi[2] = {q_row, q_row + (rows - 1) * sq.row};
    Vec16 s[2][kMaxBlocks];
    if (rows == 2) {
      score_rows_any<2>(blocks, qi, keys_t, dim, scale, s);
    } else {
      score_rows_any<1>(blocks, qi, keys_t, dim, scale, s);
    }
    float norm[2];
    float* outs[2];
    for (int r = 0; r < rows; ++r) {
      norm[r] = softmax_row(s[r], bias + (i + r) * padded, blocks, weights[r]);
      outs[r] = out + (row0 + i + r) * so.row + head * so.head;
    }
    if (rows == 2) {
      weighted_sums<2>(weights, norm, v_head, sv.row, length, dim, outs);
    } else {
      weighted_sums<1>(weights, norm, v_head, sv.row, length, dim, outs);
    }
  }
}

void attend_jet(const Task& t, const float* q, Strides sq, const float* k, Strides sk, const float* v, Strides sv,
                const PairTerms& pairs, float* out, Strides so, int64_t dim, float scale) {
  thread_local std::vector<float> tile;  // (heads, length, padded), reused by this thread's later jets
  const int64_t padded = (t.length + kWidth - 1) / kWidth * kWidth;
  tile.resize(pairs.heads * t.length * padded);
  bias_tile(t, pairs, padded, tile.data());
  for (int64_t h = 0; h < pairs.heads; ++h)
    attend_head(t, h, q, sq, k, sk, v, sv, tile.data() + h * t.length * padded, out, so, dim, scale);
}

// Class attention of one jet at one head: its class token's query against the class token and the jet's real rows.
void attend_class(const float* qc, const float* kc, const float* vc, const float* k_rows, int64_t k_stride,
                  const float* v_rows, int64_t v_stride, int64_t real, int64_t dim, float scale, float* out) {
  alignas(64) float weights[kMaxLength + 1];
  float top = -INFINITY;
  for (int64_t j = 0; j <= real; ++j) {
    const float* key = j == 0 ? kc : k_rows + (j - 1) * k_stride;
    Vec16 acc = {};
    for (int64_t d0 = 0; d0 < dim; d0 += kWidth) acc += load16(qc + d0) * load16(key + d0);
    float score = 0.0f;
    for (int l = 0; l < kWidth; ++l) score += acc[l];
    weights[j] = score * scale;
    top = weights[j] > top ? weights[j] : top;
  }
  float total = 0.0f;
  for (int64_t j = 0; j <= real; ++j) total += weights[j] = std::exp(weights[j] - top);
  const float norm = 1.0f / total;
  for (int64_t d0 = 0; d0 < dim; d0 += kWidth) {
    Vec16 acc = weights[0] * load16(vc + d0);
    for (int64_t j = 1; j <= real; ++j) acc += weights[j] * load16(v_rows + (j - 1) * v_stride + d0);
    store16(out + d0, acc * norm);
  }
}

}  // namespace

extern "C" {

// q: (B, heads, dim) strided class queries; k, v: B class rows then the packed rows (strided); jets, groups as in
// weaverlab_grouped_attention. out: (B, heads, dim) contiguous.
void weaverlab_class_attention(const float* q, int64_t q_row, int64_t q_head, const float* k, int64_t k_row,
                               int64_t k_head, const float* v, int64_t v_row, int64_t v_head, const int64_t* jets,
                               const int64_t* groups, int64_t num_groups, int64_t num_jets, float* out,
                               int64_t heads, int64_t dim, float scale, int64_t threads) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t* row = groups + 4 * g;
    for (int64_t r = 0; r < row[1]; ++r) {
      const int64_t jet = row[3] + r, first = num_jets + row[0] + r * row[2], real = jets[2 * jet + 1];
      for (int64_t h = 0; h < heads; ++h) {
        attend_class(q + jet * q_row + h * q_head, k + jet * k_row + h * k_head, v + jet * v_row + h * v_head,
                     k + first * k_row + h * k_head, k_row, v + first * v_row + h * v_head, v_row, real, dim,
                     scale, out + (jet * heads + h) * dim);
      }
    }
  }
}

int64_t weaverlab_max_length() { return kMaxLength; }

int64_t weaverlab_max_head_dim() { return kMaxHeadDim; }

// groups: (G, 4) int64 rows of (first row, jets, length, first jet); jets: (B, 2) int64 rows of (first row of
// pair terms, particles), as grouped.PairGroups. The jets run on `threads` OpenMP threads.
void weaverlab_grouped_attention(const float* q, int64_t q_row, int64_t q_head, const float* k, int64_t k_row,
                                 int64_t k_head, const float* v, int64_t v_row, int64_t v_head,
                                 const float* pair_terms, int64_t self_pairs, const int64_t* jets,
                                 const int64_t* groups, int64_t num_groups, float* out, int64_t o_row,
                                 int64_t o_head, int64_t heads, int64_t dim, float scale, int64_t threads) {
  std::vector<Task> tasks;
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t* row = groups + 4 * g;
    for (int64_t r = 0; r < row[1]; ++r) {
      const int64_t* jet = jets + 2 * (row[3] + r);
      tasks.push_back({row[0], r, row[2], jet[0], jet[1]});
    }
  }
  const PairTerms pairs{pair_terms, heads, self_pairs != 0};
  // torch's own OpenMP runtime (libgomp.so.1 is already loaded by torch), so its warm threads run the tasks
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (size_t n = 0; n < tasks.size(); ++n)
    attend_jet(tasks[n], q, {q_row, q_head}, k, {k_row, k_head}, v, {v_row, v_head}, pairs, out, {o_row, o_head}, dim,
           scale);
}

}  // extern "C"
