/* hs_mfcc.h: fixed-point MFCC front end (C99), bit-exact twin of edge/mfcc.py.
 *
 * Contract:
 * - int16 PCM at HS_SAMPLE_RATE_HZ in, int16 cepstra out (HS_N_CEPS per frame, Q8.7 by
 *   default: HS_OUT_FRAC_BITS fraction bits of log2 units). Every number comes from
 *   hs_mfcc_tables.h, generated from the FeatureSpec (HS_SPEC_JSON).
 * - No malloc, no float. The caller owns the state structs; one static scratch area of
 *   about 1.6 KB (FFT and power buffers) lives in hs_mfcc.c, so the functions are not
 *   reentrant (one front end per device).
 * - Needs 64-bit integer multiplies and an arithmetic right shift of negative values
 *   (GCC and Clang on every target we build for).
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

/* In-place per-window normalisation of one model input (HS_FRAMES_PER_WINDOW rows of
 * HS_N_CEPS) per HS_NORMALISE: subtract the floor of the window mean from c0 (1) or from
 * every cepstrum (2), saturating to int16; 0 leaves it unchanged. */
void hs_mfcc_normalise_window(int16_t *window);

#ifdef __cplusplus
}
#endif

#endif /* HS_MFCC_H */
