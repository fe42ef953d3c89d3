// LRNN harmonic components and product on the CPU: phi_l = prod_j (1 + gamma g_lj(z_lj)),
// g(t) = c0 + env(theta) sum_k (alpha_k cos k theta + beta_k sin k theta), theta = omega t + phase.
//
// Built on first use by inr/layers/lrnn_cpp.py (plain C++ and OpenMP, no torch headers; called through
// ctypes).  Layout: z (B, E) with E = r * dbar; omega, phase, c0 (E); alpha, beta transposed to (K, E),
// so every inner loop runs over contiguous e and vectorises.  One sin/cos per element (a shared
// Cody-Waite reduction and Cephes polynomials in float32; libm in float64), the harmonics by the
// Chebyshev recurrence in registers, and the parameter gradients summed per thread over rows (float
// blocks of BLOCK_ROWS rows flushed into double accumulators), then over threads in thread order, so
// results are deterministic for a given thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <omp.h>

namespace {

constexpr int BLOCK_ROWS = 64;
constexpr float SQRT_FLOOR = 1e-4f;   // inr.layers.sine.SQRT_FLOOR

// ---- sin and cos of one argument -------------------------------------------------------------
// float32: |x| <= FAST_LIMIT uses the shared reduction (error ~1 ulp of the result); a row with a
// larger argument is recomputed with libm (see row_has_large).
constexpr float FAST_LIMIT = 65536.0f;

inline void sincos_v(float x, float& s, float& c) {
  const float j = std::floor(x * 0.636619772367581343f + 0.5f);   // nearest multiple of pi/2
  const int q = static_cast<int>(j);
  float y = x - j * 1.5703125f;                                    // pi/2 in three parts (Cephes)
  y = y - j * 4.837512969970703125e-4f;
  y = y - j * 7.54978995489188216e-8f;
  const float z = y * y;
  const float ps = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * y + y;
  const float pc = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z
                   - 0.5f * z + 1.0f;
  const bool swap = (q & 1) != 0;
  const float s0 = swap ? pc : ps, c0 = swap ? ps : pc;
  s = (q & 2) ? -s0 : s0;
  c = ((q + 1) & 2) ? -c0 : c0;
}

inline void sincos_v(double x, double& s, double& c) {
  s = std::sin(x);
  c = std::cos(x);
}

inline void sincos_libm(float x, float& s, float& c) {
  s = std::sin(x);
  c = std::cos(x);
}

inline void sincos_libm(double x, double& s, double& c) { sincos_v(x, s, c); }

// arctan, branch-free (Cephes atanf), float32; libm in float64
inline float atan_v(float x) {
  const float ax = std::fabs(x);
  const bool big = ax > 2.414213562373095f, mid = ax > 0.4142135623730950f;
  const float t = big ? -1.0f / std::max(ax, 1e-30f) : (mid ? (ax - 1.0f) / (ax + 1.0f) : ax);
  const float y0 = big ? 1.5707963267948966f : (mid ? 0.7853981633974483f : 0.0f);
  const float z = t * t;
  const float y = y0 + ((((8.05374449538e-2f * z - 1.38776856032e-1f) * z + 1.99777106478e-1f) * z
                         - 3.33329491539e-1f) * z * t + t);
  return x < 0.0f ? -y : y;
}

inline double atan_v(double x) { return std::atan(x); }

template <typename T>
inline bool row_has_large(const T*, const T*, const T*, int64_t) { return false; }

template <>
inline bool row_has_large<float>(const float* z, const float* om, const float* ph, int64_t E) {
  int bad = 0;
#pragma omp simd reduction(| : bad)
  for (int64_t e = 0; e < E; ++e) bad |= std::fabs(z[e] * om[e] + ph[e]) > FAST_LIMIT;
  return bad != 0;
}

// env(theta) and env'(theta): ACT 0 sin (env 1), 1 spder (sqrt |theta|, floored), 2 spder-atan
template <int ACT, typename T>
inline void envelope(T th, T& env, T& denv) {
  if (ACT == 0) {
    env = T(1);
    denv = T(0);
  } else if (ACT == 1) {
    const T a = std::fabs(th);
    env = std::sqrt(std::max(a, T(SQRT_FLOOR)));
    const T d = T(0.5) / env;
    denv = a <= T(SQRT_FLOOR) ? T(0) : (th < T(0) ? -d : d);
  } else {
    env = atan_v(th);
    denv = T(1) / (T(1) + th * th);
  }
}

// ---- per-row passes ------------------------------------------------------------------------------

// f_e = 1 + gamma g_e for one row; SC: sincos_v or sincos_libm
template <int KC, int ACT, bool FAST, typename T>
inline void factors(const T* z, const T* om, const T* ph, const T* al, const T* be, const T* c0, T gamma,
                    int64_t E, int Kr, T* f) {
  const int K = KC > 0 ? KC : Kr;
#pragma omp simd
  for (int64_t e = 0; e < E; ++e) {
    const T th = z[e] * om[e] + ph[e];
    T s1, c1;
    if (FAST) sincos_v(th, s1, c1); else sincos_libm(th, s1, c1);
    const T two_c = c1 + c1;
    T ck = c1, sk = s1, cp = T(1), sp = T(0), S = T(0);
    for (int k = 0; k < K; ++k) {
      S += al[k * E + e] * ck + be[k * E + e] * sk;
      const T cn = two_c * ck - cp, sn = two_c * sk - sp;
      cp = ck; sp = sk; ck = cn; sk = sn;
    }
    T env, denv;
    envelope<ACT>(th, env, denv);
    f[e] = T(1) + gamma * (env * S + c0[e]);
  }
}

// backward pass 1: factors f, env, dg/dtheta, and sin/cos of theta
template <int KC, int ACT, bool FAST, typename T>
inline void backward_terms(const T* z, const T* om, const T* ph, const T* al, const T* be, const T* c0, T gamma,
                           int64_t E, int Kr, T* f, T* env_o, T* dg_o, T* s_o, T* c_o) {
  const int K = KC > 0 ? KC : Kr;
#pragma omp simd
  for (int64_t e = 0; e < E; ++e) {
    const T th = z[e] * om[e] + ph[e];
    T s1, c1;
    if (FAST) sincos_v(th, s1, c1); else sincos_libm(th, s1, c1);
    const T two_c = c1 + c1;
    T ck = c1, sk = s1, cp = T(1), sp = T(0), S = T(0), dS = T(0);
    for (int k = 0; k < K; ++k) {
      const T a = al[k * E + e], b = be[k * E + e];
      S += a * ck + b * sk;
      dS += T(k + 1) * (b * ck - a * sk);
      const T cn = two_c * ck - cp, sn = two_c * sk - sp;
      cp = ck; sp = sk; ck = cn; sk = sn;
    }
    T env, denv;
    envelope<ACT>(th, env, denv);
    f[e] = T(1) + gamma * (env * S + c0[e]);
    env_o[e] = env;
    dg_o[e] = denv * S + env * dS;
    s_o[e] = s1;
    c_o[e] = c1;
  }
}

// gg_e = d phi_l / d g_e * grad_phi_l = gamma * grad_phi_l * prod_{i != j} f_{l,i} (no division)
template <typename T>
inline void product_grad(const T* f, const T* gphi, T gamma, int64_t r, int64_t dbar, T* gg) {
  if (dbar == 2) {
    for (int64_t l = 0; l < r; ++l) {
      const T w = gamma * gphi[l];
      gg[2 * l] = w * f[2 * l + 1];
      gg[2 * l + 1] = w * f[2 * l];
    }
    return;
  }
  for (int64_t l = 0; l < r; ++l) {
    const T* fl = f + l * dbar;
    T* gl = gg + l * dbar;
    T left = gamma * gphi[l];
    for (int64_t j = 0; j < dbar; ++j) { gl[j] = left; left *= fl[j]; }
    T right = T(1);
    for (int64_t j = dbar - 1; j >= 0; --j) { gl[j] *= right; right *= fl[j]; }
  }
}

template <typename T> struct Acc { using type = double; };   // block sums of float rows go to double

template <int KC, int ACT, typename T>
void forward_impl(const T* z, const T* om, const T* ph, const T* al, const T* be, const T* c0, T* phi,
                  int64_t B, int64_t r, int64_t dbar, int Kr, T gamma, int nthreads) {
  const int64_t E = r * dbar;
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<T> f(E);
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t lo = B * t / nt, hi = B * (t + 1) / nt;
    for (int64_t b = lo; b < hi; ++b) {
      const T* zb = z + b * E;
      if (row_has_large(zb, om, ph, E))
        factors<KC, ACT, false>(zb, om, ph, al, be, c0, gamma, E, Kr, f.data());
      else
        factors<KC, ACT, true>(zb, om, ph, al, be, c0, gamma, E, Kr, f.data());
      T* out = phi + b * r;
      if (dbar == 2) {
#pragma omp simd
        for (int64_t l = 0; l < r; ++l) out[l] = f[2 * l] * f[2 * l + 1];
      } else {
        for (int64_t l = 0; l < r; ++l) {
          T p = f[l * dbar];
          for (int64_t j = 1; j < dbar; ++j) p *= f[l * dbar + j];
          out[l] = p;
        }
      }
    }
  }
}

// grads: (2K + 3, E) in the order omega, phase, alpha_1..K, beta_1..K, c0 (overwritten)
template <int KC, int ACT, typename T>
void backward_impl(const T* z, const T* om, const T* ph, const T* al, const T* be, const T* c0, const T* gphi,
                   T* gz, T* grads, int64_t B, int64_t r, int64_t dbar, int Kr, T gamma, int nthreads) {
  const int K = KC > 0 ? KC : Kr;
  const int64_t E = r * dbar, NG = 2 * K + 3;
  using A = typename Acc<T>::type;
  std::vector<A> partial(static_cast<size_t>(nthreads) * NG * E, A(0));   // per thread, summed in thread order
  int used = 1;
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<T> f(E), env(E), dg(E), s(E), c(E), gg(E), blk(NG * E, T(0));
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    A* acc = partial.data() + static_cast<size_t>(t) * NG * E;
#pragma omp single nowait
    used = nt;
    const int64_t lo = B * t / nt, hi = B * (t + 1) / nt;
    T* g_om = blk.data();
    T* g_ph = g_om + E;
    T* g_al = g_ph + E;
    T* g_be = g_al + K * E;
    T* g_c0 = g_be + K * E;
    int rows = 0;
    for (int64_t b = lo; b < hi; ++b) {
      const T* zb = z + b * E;
      if (row_has_large(zb, om, ph, E))
        backward_terms<KC, ACT, false>(zb, om, ph, al, be, c0, gamma, E, Kr, f.data(), env.data(), dg.data(),
                                       s.data(), c.data());
      else
        backward_terms<KC, ACT, true>(zb, om, ph, al, be, c0, gamma, E, Kr, f.data(), env.data(), dg.data(),
                                       s.data(), c.data());
      product_grad(f.data(), gphi + b * r, gamma, r, dbar, gg.data());
      T* gzb = gz + b * E;
#pragma omp simd
      for (int64_t e = 0; e < E; ++e) {
        const T g = gg[e], ge = g * env[e], dth = g * dg[e];
        gzb[e] = dth * om[e];
        g_om[e] += dth * zb[e];
        g_ph[e] += dth;
        g_c0[e] += g;
        const T two_c = c[e] + c[e];
        T ck = c[e], sk = s[e], cp = T(1), sp = T(0);
        for (int k = 0; k < K; ++k) {
          g_al[k * E + e] += ge * ck;
          g_be[k * E + e] += ge * sk;
          const T cn = two_c * ck - cp, sn = two_c * sk - sp;
          cp = ck; sp = sk; ck = cn; sk = sn;
        }
      }
      if (++rows == BLOCK_ROWS || b + 1 == hi) {
        for (int64_t i = 0; i < NG * E; ++i) { acc[i] += A(blk[i]); blk[i] = T(0); }
        rows = 0;
      }
    }
  }
  for (int64_t i = 0; i < NG * E; ++i) {   // a fixed order: the same bits run after run
    A v = A(0);
    for (int t = 0; t < used; ++t) v += partial[static_cast<size_t>(t) * NG * E + i];
    grads[i] = T(v);
  }
}

// ---- dispatch: float32 with a compile-time K for K <= 4 (the registry default is 4), otherwise and in
// float64 (the checking path) a runtime K

template <int ACT, typename T>
int forward_k(int K, const T* z, const T* om, const T* ph, const T* al, const T* be, const T* c0, T* phi,
              int64_t B, int64_t r, int64_t dbar, T gamma, int nt) {
  if (K < 1 || K > 8) return 1;
  if constexpr (sizeof(T) == 4) {
    switch (K) {
#define CASE(k) case k: forward_impl<k, ACT>(z, om, ph, al, be, c0, phi, B, r, dbar, K, gamma, nt); return 0;
      CASE(1) CASE(2) CASE(3) CASE(4)
#undef CASE
      default: break;
    }
  }
  forward_impl<0, ACT>(z, om, ph, al, be, c0, phi, B, r, dbar, K, gamma, nt);
  return 0;
}

template <int ACT, typename T>
int backward_k(int K, const T* z, const T* om, const T* ph, const T* al, const T* be, const T* c0, const T* gphi,
               T* gz, T* grads, int64_t B, int64_t r, int64_t dbar, T gamma, int nt) {
  if (K < 1 || K > 8) return 1;
  if constexpr (sizeof(T) == 4) {
    switch (K) {
#define CASE(k) \
  case k: backward_impl<k, ACT>(z, om, ph, al, be, c0, gphi, gz, grads, B, r, dbar, K, gamma, nt); return 0;
      CASE(1) CASE(2) CASE(3) CASE(4)
#undef CASE
      default: break;
    }
  }
  backward_impl<0, ACT>(z, om, ph, al, be, c0, gphi, gz, grads, B, r, dbar, K, gamma, nt);
  return 0;
}

template <typename T>
int forward_any(int act, int K, const T* z, const T* om, const T* ph, const T* al, const T* be, const T* c0, T* phi,
                int64_t B, int64_t r, int64_t dbar, T gamma, int nt) {
  if (act == 0) return forward_k<0>(K, z, om, ph, al, be, c0, phi, B, r, dbar, gamma, nt);
  if (act == 1) return forward_k<1>(K, z, om, ph, al, be, c0, phi, B, r, dbar, gamma, nt);
  if (act == 2) return forward_k<2>(K, z, om, ph, al, be, c0, phi, B, r, dbar, gamma, nt);
  return 2;
}

template <typename T>
int backward_any(int act, int K, const T* z, const T* om, const T* ph, const T* al, const T* be, const T* c0,
                 const T* gphi, T* gz, T* grads, int64_t B, int64_t r, int64_t dbar, T gamma, int nt) {
  if (act == 0) return backward_k<0>(K, z, om, ph, al, be, c0, gphi, gz, grads, B, r, dbar, gamma, nt);
  if (act == 1) return backward_k<1>(K, z, om, ph, al, be, c0, gphi, gz, grads, B, r, dbar, gamma, nt);
  if (act == 2) return backward_k<2>(K, z, om, ph, al, be, c0, gphi, gz, grads, B, r, dbar, gamma, nt);
  return 2;
}

}  // namespace

extern "C" {

// Return 0 on success, 1 for an unsupported K, 2 for an unknown activation.
int lrnn_harmonic_forward_f32(const float* z, const float* om, const float* ph, const float* al, const float* be,
                              const float* c0, float* phi, int64_t B, int64_t r, int64_t dbar, int K, int act,
                              double gamma, int nt) {
  return forward_any<float>(act, K, z, om, ph, al, be, c0, phi, B, r, dbar, float(gamma), nt);
}

int lrnn_harmonic_forward_f64(const double* z, const double* om, const double* ph, const double* al,
                              const double* be, const double* c0, double* phi, int64_t B, int64_t r, int64_t dbar,
                              int K, int act, double gamma, int nt) {
  return forward_any<double>(act, K, z, om, ph, al, be, c0, phi, B, r, dbar, gamma, nt);
}

int lrnn_harmonic_backward_f32(const float* z, const float* om, const float* ph, const float* al, const float* be,
                               const float* c0, const float* gphi, float* gz, float* grads, int64_t B, int64_t r,
                               int64_t dbar, int K, int act, double gamma, int nt) {
  return backward_any<float>(act, K, z, om, ph, al, be, c0, gphi, gz, grads, B, r, dbar, float(gamma), nt);
}

int lrnn_harmonic_backward_f64(const double* z, const double* om, const double* ph, const double* al,
                               const double* be, const double* c0, const double* gphi, double* gz, double* grads,
                               int64_t B, int64_t r, int64_t dbar, int K, int act, double gamma, int nt) {
  return backward_any<double>(act, K, z, om, ph, al, be, c0, gphi, gz, grads, B, r, dbar, gamma, nt);
}

}  // extern "C"
