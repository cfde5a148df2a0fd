/* hs_mfcc.h: fixed-point MFCC front end (C99), bit-exact twin of edge/mfcc.py.
 *
 * Contract:
 * - int16 PCM at HS_SAMPLE_RATE_HZ in, int16 cepstra out (HS_N_CEPS per frame, Q8.7 by
 *   default: HS_OUT_FRAC_BITS fraction bits of log2 units). Every number comes from
 *   hs_mfcc_tables.h, generated from the FeatureSpec (HS_SPEC_JSON).
 * - No malloc, no float. The caller owns the state structs (hs_mfcc_stream, and the
 *   216-byte hs_mfcc_stats of the per-recording normalisations); one static scratch area
 *   of about 1.6 KB (FFT and power buffers) lives in hs_mfcc.c, so the functions are not
 *   reentrant (one front end per device).
 * - Needs 64-bit integer multiplies, 64-bit divisions (libgcc's __aeabi_ldivmod on
 *   Cortex-M: one or two per cepstrum and window, for the per-recording normalisations
 *   only) and an arithmetic right shift of negative values (GCC and Clang on every
 *   target we build for).
 */
#ifndef HS_MFCC_H
#define HS_MFCC_H

#include <stddef.h>
#include <stdint.h>

#include "hs_mfcc_tables.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Upper bound of the frames that pushing n samples can complete. */
#define HS_MFCC_MAX_FRAMES(n) ((size_t)(n) / HS_HOP_LENGTH + 1u)

/* Streaming state: the samples of the unfinished frame and the sample before them. */
typedef struct {
    int16_t buf[HS_FRAME_LENGTH]; /* buf[0..fill) are the next frame's first samples */
    uint32_t fill;
    int16_t prev;                 /* sample before buf[0]: pre-emphasis memory (0 at start) */
    uint32_t frames_out;          /* frames produced since hs_mfcc_stream_init */
} hs_mfcc_stream;

/* Cepstra of one frame of HS_FRAME_LENGTH samples; prev_sample is the sample before
 * frame[0] (0 at the start of a recording). out receives HS_N_CEPS values. */
void hs_mfcc_frame(const int16_t *frame, int16_t prev_sample, int16_t *out);

void hs_mfcc_stream_init(hs_mfcc_stream *st);

/* Push n samples; writes the cepstra of each completed frame to out (row-major,
 * HS_N_CEPS per frame; out must hold HS_MFCC_MAX_FRAMES(n) rows) and returns how many
 * frames it wrote. Gives the same bits as the batch front end for any chunking. */
size_t hs_mfcc_stream_push(hs_mfcc_stream *st, const int16_t *pcm, size_t n, int16_t *out);

/* Running statistics of every frame of the recording heard so far, per cepstrum c:
 * n frames, sum[c] = S = sum of x, sumsq[c] = Q = sum of x*x (x int16 Q8.7). The
 * per-recording normalisations (HS_NORMALISE 3 rec_mean, 4 rec_mvn) divide by them; a
 * device keeps these instead of the whole recording. n stops at HS_STATS_MAX_FRAMES
 * (43.7 min at 25 frames/s): later frames leave n, S and Q unchanged, which bounds
 * |S| < 2^31 and Q < 2^46, so n*Q and S*S stay below 2^62 (int64).
 * RAM: sizeof(hs_mfcc_stats) = 16 * HS_N_CEPS + 8 bytes on Cortex-M4 and x86-64 (216
 * for 13 cepstra: the uint32 count is padded to the 8-byte alignment of int64). The
 * Python twins: edge.mfcc.recording_stats, firmware_bridge/emulator.py's WindowCutter. */
typedef struct {
    int64_t sum[HS_N_CEPS];   /* S: |S| <= n * 2^15 < 2^31 */
    int64_t sumsq[HS_N_CEPS]; /* Q: Q <= n * 2^30 < 2^46 */
    uint32_t n;               /* frames counted, 0..HS_STATS_MAX_FRAMES */
} hs_mfcc_stats;

/* Start a new recording: no frames counted. */
void hs_mfcc_stats_init(hs_mfcc_stats *st);

/* Count one frame (HS_N_CEPS cepstra) into the statistics; nothing once n reaches
 * HS_STATS_MAX_FRAMES. Push every frame in order, before normalising a window it ends. */
void hs_mfcc_stats_push(hs_mfcc_stats *st, const int16_t *row);

/* In-place normalisation of one model input (HS_FRAMES_PER_WINDOW rows of HS_N_CEPS, in
 * time order) per HS_NORMALISE, saturating to int16, as edge.mfcc.windows:
 *   0 none:     unchanged.
 *   1 c0:       c0 minus the floor of its mean over the window.
 *   2 cmn:      every cepstrum minus the floor of its mean over the window.
 *   3 rec_mean: every cepstrum x minus mean = floor(S / n) of the recording so far.
 *   4 rec_mvn:  (x - mean) / sd in Q(HS_OUT_FRAC_BITS), rounded half up:
 *               floor((2 (x - mean) 2^HS_OUT_FRAC_BITS + sd) / (2 sd)), where
 *               sd = max(isqrt(floor((n Q - S^2) / n^2)), HS_SD_FLOOR).
 * Modes 0-2 ignore st (it may be NULL). Modes 3-4 read st, which must hold the frames
 * [0, end of this window) (capped as above); with st NULL or n == 0 (no frame heard: the
 * device never calls it so) the window is left unchanged. */
void hs_mfcc_normalise_window(int16_t *window, const hs_mfcc_stats *st);

#ifdef __cplusplus
}
#endif

#endif /* HS_MFCC_H */
