/* hs_mfcc_cli.c: host driver for tests and benchmarks.
 *
 *   hs_mfcc_cli [CHUNK] [windows|bench REPEAT]
 *
 * Reads raw little-endian int16 PCM from stdin and pushes it through the streaming front
 * end CHUNK samples at a time (default 4096). Writes int16 cepstra to stdout, one frame
 * after another; with "windows", writes the normalised model inputs instead
 * (HS_FRAMES_PER_WINDOW x HS_N_CEPS each, in every HS_NORMALISE mode: the per-recording
 * ones with the statistics of the frames up to each window's end). With "bench REPEAT"
 * it runs the input REPEAT times and prints the frames and the elapsed CPU seconds as
 * text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hs_mfcc.h"

#define MAX_CHUNK 65536
#define MAX_INPUT (1 << 24)

static int16_t s_chunk_out[HS_MFCC_MAX_FRAMES(MAX_CHUNK) * HS_N_CEPS];
static int16_t s_rows[HS_FRAMES_PER_WINDOW * HS_N_CEPS];
static int16_t s_win[HS_FRAMES_PER_WINDOW * HS_N_CEPS];
static int16_t s_input[MAX_INPUT];

static size_t s_rows_filled;
static size_t s_frames_seen;
static hs_mfcc_stats s_stats; /* every frame so far, as the device keeps them */

/* Count every frame into the recording statistics and keep the last
 * HS_FRAMES_PER_WINDOW; emit a window at every window hop, normalised with the
 * statistics at its last frame (what the device does while it streams). */
static void window_frame(const int16_t *frame)
{
    const size_t row = HS_N_CEPS * sizeof(int16_t);
    hs_mfcc_stats_push(&s_stats, frame);
    if (s_rows_filled == HS_FRAMES_PER_WINDOW) {
        memmove(s_rows, s_rows + HS_N_CEPS, (HS_FRAMES_PER_WINDOW - 1) * row);
        s_rows_filled--;
    }
    memcpy(s_rows + s_rows_filled * HS_N_CEPS, frame, row);
    s_rows_filled++;
    s_frames_seen++;
    if (s_frames_seen >= HS_FRAMES_PER_WINDOW
        && (s_frames_seen - HS_FRAMES_PER_WINDOW) % HS_WINDOW_HOP_FRAMES == 0) {
        memcpy(s_win, s_rows, sizeof(s_win));
        hs_mfcc_normalise_window(s_win, &s_stats);
        fwrite(s_win, sizeof(int16_t), HS_FRAMES_PER_WINDOW * HS_N_CEPS, stdout);
    }
}

static size_t run(const int16_t *pcm, size_t n, size_t chunk, int mode)
{
    hs_mfcc_stream st;
    size_t done = 0, total = 0;
    hs_mfcc_stream_init(&st);
    hs_mfcc_stats_init(&s_stats);
    s_rows_filled = s_frames_seen = 0;
    while (done < n) {
        size_t take = n - done < chunk ? n - done : chunk;
        size_t frames = hs_mfcc_stream_push(&st, pcm + done, take, s_chunk_out);
        size_t f;
        if (mode == 0) {
            fwrite(s_chunk_out, sizeof(int16_t), frames * HS_N_CEPS, stdout);
        } else if (mode == 1) {
            for (f = 0; f < frames; f++) {
                window_frame(s_chunk_out + f * HS_N_CEPS);
            }
        }
        done += take;
        total += frames;
    }
    return total;
}

int main(int argc, char **argv)
{
    size_t chunk = argc > 1 ? (size_t)strtoul(argv[1], NULL, 10) : 4096u;
    int mode = 0;
    long repeat = 1, r;
    size_t n = fread(s_input, sizeof(int16_t), MAX_INPUT, stdin);
    if (argc > 2 && strcmp(argv[2], "windows") == 0) {
        mode = 1;
    } else if (argc > 3 && strcmp(argv[2], "bench") == 0) {
        mode = 2;
        repeat = strtol(argv[3], NULL, 10);
    }
    if (chunk == 0 || chunk > MAX_CHUNK || repeat < 1) {
        fprintf(stderr, "hs_mfcc_cli: CHUNK must be 1..%d and REPEAT >= 1\n", MAX_CHUNK);
        return 2;
    }
    if (mode == 2) {
        clock_t t0 = clock();
        size_t frames = 0;
        for (r = 0; r < repeat; r++) {
            frames += run(s_input, n, chunk, mode);
        }
        printf("%lu %.6f\n", (unsigned long)frames, (double)(clock() - t0) / CLOCKS_PER_SEC);
        return 0;
    }
    run(s_input, n, chunk, mode);
    return 0;
}
