/* hs_mfcc.c: fixed-point MFCC, stage for stage the same integers as edge/mfcc.py.
 * See hs_mfcc.h for the contract and edge/mfcc.py for the bounds behind each format. */
#include "hs_mfcc.h"

#include <string.h>

#define HS_INT16_MIN (-32768)
#define HS_INT16_MAX 32767
#define HS_OUT_SHIFT (HS_DCT_Q + HS_LOG_Q - HS_OUT_FRAC_BITS)
#define HS_LOG_FRAC_BITS (HS_LOG_TABLE_Q - HS_LOG_TABLE_BITS)
#define HS_LOG_DROP (HS_LOG_TABLE_Q - HS_LOG_Q)

/* Scratch for one frame (not reentrant; see hs_mfcc.h). */
static int32_t s_re[HS_N_FFT];        /* FFT real parts, |.| <= 2^30 */
static int32_t s_im[HS_N_FFT];        /* FFT imaginary parts */
static int64_t s_power[HS_N_FFT_BINS]; /* power spectrum, < 2^HS_POWER_BITS */

/* Bits needed for v (0 for 0): the same 6-step search as edge.fixed_point.bit_length. */
static int32_t bit_length(uint64_t v)
{
    static const int32_t steps[6] = {32, 16, 8, 4, 2, 1};
    int32_t n = 0;
    int i;
    for (i = 0; i < 6; i++) {
        if ((v >> steps[i]) != 0u) {
            v >>= steps[i];
            n += steps[i];
        }
    }
    return n + (v != 0u);
}

/* v / 2^s rounded half up for s > 0, v * 2^-s otherwise (edge.fixed_point.round_shift). */
static int64_t round_shift(int64_t v, int32_t s)
{
    if (s > 0) {
        return (v + ((int64_t)1 << (s - 1))) >> s;
    }
    return v * ((int64_t)1 << -s);
}

static int64_t abs64(int64_t v) { return v < 0 ? -v : v; }

/* Pre-emphasis and window of sample n: y * w * 2^(15 + HS_WINDOW_Q), |.| < 2^61. */
static int64_t windowed(const int16_t *frame, int16_t prev, int n)
{
    int32_t before = n > 0 ? frame[n - 1] : prev;
    int32_t y = (int32_t)frame[n] * (1 << HS_PREEMPH_IN_Q) - HS_PREEMPH_Q15 * before; /* q15 */
    return (int64_t)y * hs_window[n];                                /* q(15+HS_WINDOW_Q) */
}

/* Block floating point into bit-reversed FFT order; returns the frame exponent s. */
static int32_t load_frame(const int16_t *frame, int16_t prev)
{
    int64_t peak = 0;
    int32_t shift;
    int n;
    for (n = 0; n < HS_FRAME_LENGTH; n++) {
        int64_t a = abs64(windowed(frame, prev, n));
        peak = a > peak ? a : peak;
    }
    shift = bit_length((uint64_t)peak) - HS_FFT_IN_BITS;
    for (n = 0; n < HS_N_FFT; n++) {
        int64_t v = n < HS_FRAME_LENGTH ? round_shift(windowed(frame, prev, n), shift) : 0;
        s_re[hs_bitrev[n]] = (int32_t)v;                            /* <= 2^HS_FFT_IN_BITS */
        s_im[hs_bitrev[n]] = 0;
    }
    return shift;
}

/* Radix-2 decimation-in-time FFT in place; a component grows at most 2x per stage. */
static void fft(void)
{
    int half;
    for (half = 1; half < HS_N_FFT; half <<= 1) {
        int step = HS_N_FFT / (2 * half);
        int start, j;
        for (start = 0; start < HS_N_FFT; start += 2 * half) {
            for (j = 0; j < half; j++) {
                int a = start + j, b = a + half;
                int32_t tr = s_re[b], ti = s_im[b];
                if (half > 1) {
                    int64_t wr = hs_twiddle_re[j * step], wi = hs_twiddle_im[j * step]; /* q30 */
                    int64_t rnd = (int64_t)1 << (HS_TWIDDLE_Q - 1);
                    tr = (int32_t)((s_re[b] * wr - s_im[b] * wi + rnd) >> HS_TWIDDLE_Q);
                    ti = (int32_t)((s_re[b] * wi + s_im[b] * wr + rnd) >> HS_TWIDDLE_Q);
                }
                s_re[b] = s_re[a] - tr;
                s_im[b] = s_im[a] - ti;
                s_re[a] += tr;
                s_im[a] += ti;                                      /* |.| <= 2^30 */
            }
        }
    }
}

/* Power spectrum with its block exponent s_p: bins < 2^HS_POWER_BITS. */
static int32_t power_spectrum(void)
{
    int64_t peak = 0;
    int32_t shift;
    int k;
    for (k = 0; k < HS_N_FFT_BINS; k++) {
        int64_t re = s_re[k], im = s_im[k];
        s_power[k] = re * re + im * im;                             /* < 2^61 */
        peak = s_power[k] > peak ? s_power[k] : peak;
    }
    shift = bit_length((uint64_t)peak) - HS_POWER_BITS;
    shift = shift > 0 ? shift : 0;
    for (k = 0; k < HS_N_FFT_BINS; k++) {
        s_power[k] = round_shift(s_power[k], shift);               /* < 2^HS_POWER_BITS */
    }
    return shift;
}

/* log2(m) in Q(HS_LOG_Q) for m > 0: leading-zero count plus the interpolated table. */
static int32_t log2_q(int64_t m)
{
    int32_t e = bit_length((uint64_t)m) - 1;
    int64_t mant = e >= HS_LOG_TABLE_Q ? m >> (e - HS_LOG_TABLE_Q) : m << (HS_LOG_TABLE_Q - e);
    int64_t idx, frac, base, lg;
    mant -= (int64_t)1 << HS_LOG_TABLE_Q;                           /* q30 in [0, 1) */
    idx = mant >> HS_LOG_FRAC_BITS;
    frac = mant & (((int64_t)1 << HS_LOG_FRAC_BITS) - 1);
    base = hs_log2_table[idx];
    lg = base + (((hs_log2_table[idx + 1] - base) * frac
                  + ((int64_t)1 << (HS_LOG_FRAC_BITS - 1))) >> HS_LOG_FRAC_BITS);   /* q30 */
    lg = (lg + ((int64_t)1 << (HS_LOG_DROP - 1))) >> HS_LOG_DROP;  /* q(HS_LOG_Q) */
    return e * (1 << HS_LOG_Q) + (int32_t)lg;
}

/* Mel sums, log2 and floor: log2 mel energies (int16 units^2) in Q(HS_LOG_Q). */
static void log_mel(int32_t exponent, int32_t *logmel)
{
    const int32_t floor_q = HS_LOG2_FLOOR * (1 << HS_LOG_Q);
    int b, i;
    for (b = 0; b < HS_N_MELS; b++) {
        int64_t acc = 0;
        const int16_t *w = &hs_mel_weights[hs_mel_offset[b]];
        const int64_t *p = &s_power[hs_mel_start[b]];
        for (i = 0; i < hs_mel_len[b]; i++) {
            acc += p[i] * w[i];                                     /* < 2^62 */
        }
        if (acc > 0) {
            int32_t lg = log2_q(acc) + exponent * (1 << HS_LOG_Q);
            logmel[b] = lg > floor_q ? lg : floor_q;
        } else {
            logmel[b] = floor_q;                                    /* silence: the floor */
        }
    }
}

/* Orthonormal DCT-II, round to Q(HS_OUT_FRAC_BITS) and saturate to int16. */
static void dct(const int32_t *logmel, int16_t *out)
{
    int k, b;
    for (k = 0; k < HS_N_CEPS; k++) {
        int64_t acc = 0;
        int64_t v;
        for (b = 0; b < HS_N_MELS; b++) {
            acc += (int64_t)hs_dct[k * HS_N_MELS + b] * logmel[b];  /* q(DCT_Q + LOG_Q) */
        }
        v = (acc + ((int64_t)1 << (HS_OUT_SHIFT - 1))) >> HS_OUT_SHIFT;
        v = v < HS_INT16_MIN ? HS_INT16_MIN : (v > HS_INT16_MAX ? HS_INT16_MAX : v);
        out[k] = (int16_t)v;                                        /* q8.7 by default */
    }
}

void hs_mfcc_frame(const int16_t *frame, int16_t prev_sample, int16_t *out)
{
    int32_t logmel[HS_N_MELS];
    int32_t s_fft = load_frame(frame, prev_sample);
    int32_t s_pow;
    fft();
    s_pow = power_spectrum();
    log_mel(2 * s_fft + s_pow - HS_EXP_OFFSET, logmel);
    dct(logmel, out);
}

void hs_mfcc_stream_init(hs_mfcc_stream *st)
{
    memset(st, 0, sizeof(*st));
}

size_t hs_mfcc_stream_push(hs_mfcc_stream *st, const int16_t *pcm, size_t n, int16_t *out)
{
    size_t frames = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        st->buf[st->fill++] = pcm[i];
        if (st->fill == HS_FRAME_LENGTH) {
            hs_mfcc_frame(st->buf, st->prev, out + frames * HS_N_CEPS);
            frames++;
            st->prev = st->buf[HS_HOP_LENGTH - 1];
            memmove(st->buf, st->buf + HS_HOP_LENGTH,
                    (HS_FRAME_LENGTH - HS_HOP_LENGTH) * sizeof(st->buf[0]));
            st->fill = HS_FRAME_LENGTH - HS_HOP_LENGTH;
        }
    }
    st->frames_out += (uint32_t)frames;
    return frames;
}

/* ---- normalisation ------------------------------------------------------------------- */
#define HS_NORM_NONE 0
#define HS_NORM_C0 1
#define HS_NORM_CMN 2
#define HS_NORM_REC_MEAN 3
#define HS_NORM_REC_MVN 4

#if HS_NORMALISE < HS_NORM_NONE || HS_NORMALISE > HS_NORM_REC_MVN
#error "HS_NORMALISE is a mode this front end does not know: regenerate hs_mfcc_tables.h"
#endif
#if HS_STATS_MAX_FRAMES > 65535
#error "more than 65535 frames in the statistics overflow n * Q and S * S (int64)"
#endif
#if HS_OUT_FRAC_BITS > 10
#error "rec_mvn's numerator 2 (x - mean) 2^HS_OUT_FRAC_BITS + sd must fit int32"
#endif

/* Floor division, as numpy's // (C's / truncates toward zero). */
static int32_t floor_div(int32_t a, int32_t b)
{
    int32_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* The same for int64 (on Cortex-M4 a libgcc call: no 64-bit divide instruction). */
static int64_t floor_div64(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* floor(sqrt(v)), exact: one result bit per step from the top (no float on the device;
 * edge.fixed_point.isqrt is the same loop). v < 2^62 here, so the result is < 2^31. */
static uint32_t isqrt64(uint64_t v)
{
    uint64_t root = 0;
    uint64_t bit = (uint64_t)1 << 62; /* the highest power of 4 a uint64 holds */
    while (bit > v) {
        bit >>= 2;
    }
    while (bit != 0u) {
        if (v >= root + bit) {
            v -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    return (uint32_t)root;
}

static int16_t saturate16(int32_t v)
{
    return (int16_t)(v < HS_INT16_MIN ? HS_INT16_MIN : (v > HS_INT16_MAX ? HS_INT16_MAX : v));
}

void hs_mfcc_stats_init(hs_mfcc_stats *st)
{
    memset(st, 0, sizeof(*st));
}

void hs_mfcc_stats_push(hs_mfcc_stats *st, const int16_t *row)
{
    int c;
    if (st->n >= HS_STATS_MAX_FRAMES) {
        return; /* the cap keeps n * Q and S * S in int64: later frames are not counted */
    }
    for (c = 0; c < HS_N_CEPS; c++) {
        const int32_t x = row[c];
        st->sum[c] += x;
        st->sumsq[c] += (int64_t)(x * x); /* x * x <= 2^30 fits int32 */
    }
    st->n++;
}

/* c0 (cols 1) or every cepstrum (cols HS_N_CEPS) minus the floor of its window mean. */
static void centre_window(int16_t *window, int cols)
{
    int c, f;
    for (c = 0; c < cols; c++) {
        int32_t sum = 0; /* |sum| <= HS_FRAMES_PER_WINDOW * 2^15 */
        int32_t mean;
        for (f = 0; f < HS_FRAMES_PER_WINDOW; f++) {
            sum += window[f * HS_N_CEPS + c];
        }
        mean = floor_div(sum, HS_FRAMES_PER_WINDOW);
        for (f = 0; f < HS_FRAMES_PER_WINDOW; f++) {
            window[f * HS_N_CEPS + c] = saturate16(window[f * HS_N_CEPS + c] - mean);
        }
    }
}

/* Every cepstrum minus the recording's running mean, and for rec_mvn divided by its
 * running standard deviation (edge.mfcc.normalise_by_recording). */
static void normalise_by_recording(int16_t *window, const hs_mfcc_stats *st, int mvn)
{
    const int64_t n = st->n;
    int c, f;
    for (c = 0; c < HS_N_CEPS; c++) {
        const int64_t s = st->sum[c], q = st->sumsq[c];
        /* floor(S / n) of int16 values is an int16 */
        const int32_t mean = (int32_t)floor_div64(s, n);
        int32_t sd2 = 2; /* 2 sd, sd >= HS_SD_FLOOR when mvn */
        if (mvn) {
            /* n Q - S^2 = n^2 var >= 0 (Cauchy-Schwarz), both terms < 2^62 */
            const int64_t var = floor_div64(n * q - s * s, n * n); /* q(2 HS_OUT_FRAC_BITS) */
            uint32_t sd = isqrt64((uint64_t)var);                   /* q(HS_OUT_FRAC_BITS) */
            sd = sd > HS_SD_FLOOR ? sd : HS_SD_FLOOR;               /* sd < 2^16 */
            sd2 = (int32_t)(2u * sd);
        }
        for (f = 0; f < HS_FRAMES_PER_WINDOW; f++) {
            int32_t d = window[f * HS_N_CEPS + c] - mean; /* |d| < 2^16 */
            if (mvn) {
                /* d / sd in Q(HS_OUT_FRAC_BITS), half up; the multiply, not d << k:
                 * a left shift of a negative value is undefined in C. |.| < 2^28. */
                d = floor_div(2 * d * (1 << HS_OUT_FRAC_BITS) + sd2 / 2, sd2);
            }
            window[f * HS_N_CEPS + c] = saturate16(d);
        }
    }
}

void hs_mfcc_normalise_window(int16_t *window, const hs_mfcc_stats *st)
{
    switch (HS_NORMALISE) {
    case HS_NORM_C0:
        centre_window(window, 1);
        break;
    case HS_NORM_CMN:
        centre_window(window, HS_N_CEPS);
        break;
    case HS_NORM_REC_MEAN:
    case HS_NORM_REC_MVN:
        if (st != NULL && st->n > 0u) {
            normalise_by_recording(window, st, HS_NORMALISE == HS_NORM_REC_MVN);
        }
        break;
    default: /* HS_NORM_NONE */
        break;
    }
}
