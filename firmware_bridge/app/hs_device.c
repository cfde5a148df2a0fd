/* hs_device.c: serial protocol v1 on the device (see hs_device.h and
 * docs/serial_protocol.md, section 7). The C twin of firmware_bridge/emulator.py's Device. */
#include "hs_device.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "hs_mfcc.h"
#include "hs_model.h"
#include "hs_proto.h"
#include "model_runner.h"
#include "platform.h"

#ifndef HS_DEVICE_TRACE
#define HS_DEVICE_TRACE 0 /* 1: HS_* lines on the console (host and QEMU builds, for tests) */
#endif
#ifndef HS_FIRMWARE_VERSION
#define HS_FIRMWARE_VERSION "firmware-1"
#endif

#define WINDOW_VALUES (HS_FRAMES_PER_WINDOW * HS_N_CEPS)
#define MAX_CHUNK \
    (HS_DEVICE_MAX_CHUNK < HS_WINDOW_HOP_SAMPLES ? HS_DEVICE_MAX_CHUNK : HS_WINDOW_HOP_SAMPLES)
/* RESULT: u16 index, u32 received, u8 n, i8 scores[n], u16 rows, u16 cols, i16 features */
#define RESULT_HEAD (2u + 4u + 1u + HS_MODEL_N_CLASSES + 2u + 2u)
#define RESULT_MAX (RESULT_HEAD + 2u * WINDOW_VALUES)
#define FEATURES_FIT (RESULT_MAX <= HS_PROTO_MAX_PAYLOAD)
#define ANSWER_MAX (FEATURES_FIT ? RESULT_MAX : 256u)
#define DEVICE_ID_MAX 32u
#define INT8_LO (-128)
#define INT8_HI 127

#if HS_PROTO_VERSION != 1u
#error "the messages below are protocol v1's"
#endif
#if HS_SAMPLE_RATE_HZ != HS_MODEL_SAMPLE_RATE_HZ || HS_N_CEPS != HS_MODEL_INPUT_COLS || \
    HS_FRAMES_PER_WINDOW != HS_MODEL_INPUT_ROWS
#error "hs_mfcc_tables.h and hs_model.h come from different exports: regenerate both"
#endif

typedef struct {
    uint8_t active;
    uint8_t features;           /* START asked for the feature windows */
    uint16_t last_seq;          /* seq of START or of the last AUDIO */
    uint32_t expected;          /* samples announced by START (0: unknown) */
    uint32_t received;
    uint16_t windows;
    int32_t score_sums[HS_MODEL_N_CLASSES];
    double prob_sums[HS_MODEL_N_CLASSES]; /* sum over windows of the dequantised scores */
    hs_mfcc_stream stream;
    hs_mfcc_stats stats;        /* every frame of the recording so far (rec_* modes) */
    int16_t ring[HS_FRAMES_PER_WINDOW][HS_N_CEPS]; /* last frames; oldest at ring_head */
    uint32_t ring_head;
    uint32_t frames_seen;
} session_t;

/* A request the device refuses: code and message for the ERROR answer. */
typedef struct {
    uint8_t code;
    const char *message;
} fault_t;

static const char *const s_class_names[HS_MODEL_N_CLASSES] = HS_MODEL_CLASS_NAMES_INIT;
static hs_proto_decoder s_dec;
static hs_proto_request_id s_last;
static uint8_t s_nak_sent;            /* a BAD_CRC error went out since the last intact frame */
static session_t s_session;
static int16_t s_window[WINDOW_VALUES]; /* the window being scored, rows in time order */
static uint8_t s_payload[ANSWER_MAX];
static uint8_t s_answer[HS_PROTO_WIRE_SIZE(ANSWER_MAX)]; /* last answer on the wire: the cache */
static size_t s_answer_len;
static hs_device_stats s_stats;
static char s_device_id[DEVICE_ID_MAX]; /* "hs-" + platform name */

const hs_device_stats *hs_device_get_stats(void) { return &s_stats; }

void hs_device_init(void)
{
    hs_proto_decoder_init(&s_dec);
    memset(&s_last, 0, sizeof s_last);
    memset(&s_session, 0, sizeof s_session);
    memset(&s_stats, 0, sizeof s_stats);
    s_nak_sent = 0;
    s_answer_len = 0;
    strcpy(s_device_id, "hs-");
    strncat(s_device_id, hs_platform_name, DEVICE_ID_MAX - 4u);
}

/* ---- answers ---------------------------------------------------------------------------- */
static void send_frame(uint8_t type, uint16_t seq, size_t len)
{
    s_answer_len = hs_proto_encode(type, seq, s_payload, len, s_answer, sizeof s_answer);
    hs_serial_write(s_answer, s_answer_len);
}

static void send_error(uint8_t code, uint8_t offending, uint16_t seq, const char *message)
{
    send_frame(HS_MSG_ERROR, seq,
               hs_proto_build_error(code, offending, message, s_payload, sizeof s_payload));
}

static size_t ack(uint8_t type)
{
    return hs_proto_build_ack(type, s_session.received, s_session.windows, s_payload,
                              sizeof s_payload);
}

/* ---- the model side --------------------------------------------------------------------- */
/* int8 model input from the int16 window, as edge.interpreter.quantise_features:
 * q = round_half_up(v * M * 2^-shift) + zero_point, saturated. */
static void quantise_window(const int16_t *window, int8_t *out)
{
    const int64_t round = (int64_t)1 << (HS_MODEL_INPUT_SHIFT - 1);
    size_t i;
    for (i = 0; i < WINDOW_VALUES; i++) {
        const int64_t acc = (int64_t)window[i] * HS_MODEL_INPUT_MULTIPLIER; /* q(shift) */
        int32_t q = (int32_t)((acc + round) >> HS_MODEL_INPUT_SHIFT);      /* int */
        q += HS_MODEL_INPUT_ZERO_POINT;                                     /* int8 code */
        out[i] = (int8_t)(q < INT8_LO ? INT8_LO : (q > INT8_HI ? INT8_HI : q));
    }
}

/* Copy the ring in time order, normalise (per window, or by the recording's statistics
 * up to this window's last frame), quantise, invoke; scores in out. */
static int score_window(int8_t *out)
{
    session_t *s = &s_session;
    size_t len = 0, r;
    int8_t *input = hs_model_input(&len);
    const int8_t *output;
    uint64_t start;
    for (r = 0; r < HS_FRAMES_PER_WINDOW; r++) {
        memcpy(&s_window[r * HS_N_CEPS], s->ring[(s->ring_head + r) % HS_FRAMES_PER_WINDOW],
               sizeof s->ring[0]);
    }
    hs_mfcc_normalise_window(s_window, &s->stats); /* int16 q8.7, per HS_NORMALISE */
    if (input == NULL || len != WINDOW_VALUES) return -1;
    quantise_window(s_window, input);
    if (hs_model_reset() != HS_MODEL_OK) return -1;
    start = hs_platform_ticks();
    if (hs_model_invoke() != HS_MODEL_OK) return -1;
    s_stats.invoke_ticks += hs_platform_ticks() - start;
    output = hs_model_output(&len);
    if (len != HS_MODEL_N_CLASSES) return -1;
    memcpy(out, output, HS_MODEL_N_CLASSES);
#if HS_DEVICE_TRACE
    printf("HS_WINDOW %u %lu\n", (unsigned)s->windows,
           (unsigned long)(hs_platform_ticks() - start));
#endif
    return 0;
}

/* One new feature row, counted into the recording statistics and kept in the ring; 1
 * when it completes a window (window j ends at frame HS_FRAMES_PER_WINDOW + j *
 * HS_WINDOW_HOP_FRAMES, as emulator.WindowCutter). */
static int push_row(const int16_t *row)
{
    session_t *s = &s_session;
    hs_mfcc_stats_push(&s->stats, row);
    if (s->frames_seen < HS_FRAMES_PER_WINDOW) {
        memcpy(s->ring[s->frames_seen], row, sizeof s->ring[0]);
    } else {
        memcpy(s->ring[s->ring_head], row, sizeof s->ring[0]); /* overwrite the oldest */
        s->ring_head = (s->ring_head + 1u) % HS_FRAMES_PER_WINDOW;
    }
    s->frames_seen++;
    return s->frames_seen >= HS_FRAMES_PER_WINDOW &&
           (s->frames_seen - HS_FRAMES_PER_WINDOW) % HS_WINDOW_HOP_FRAMES == 0u;
}

/* ---- requests --------------------------------------------------------------------------- */
static fault_t fault(uint8_t code, const char *message)
{
    fault_t f;
    f.code = code;
    f.message = message;
    return f;
}

static fault_t on_hello(const hs_proto_frame *f, uint8_t *type, size_t *len)
{
    hs_proto_identify id;
    static const uint8_t model_prefix[8] = HS_MODEL_SHA256_PREFIX_INIT;
    static const uint8_t spec_prefix[8] = HS_SPEC_SHA256_PREFIX_INIT;
    if (hs_proto_parse_empty(f) != 0) return fault(HS_ERR_BAD_PAYLOAD, "HELLO carries nothing");
    memset(&id, 0, sizeof id);
    id.flags = FEATURES_FIT ? HS_PROTO_FLAG_FEATURES : 0u;
    id.max_chunk_samples = MAX_CHUNK;
    id.sample_rate_hz = HS_SAMPLE_RATE_HZ;
    id.window_samples = HS_WINDOW_SAMPLES;
    id.window_hop_samples = HS_WINDOW_HOP_SAMPLES;
    id.frames_per_window = HS_FRAMES_PER_WINDOW;
    id.n_ceps = HS_N_CEPS;
    memcpy(id.model_sha256_prefix, model_prefix, 8);
    memcpy(id.spec_sha256_prefix, spec_prefix, 8);
    id.threshold = HS_MODEL_THRESHOLD;
    id.output_scale = HS_MODEL_OUTPUT_SCALE;
    id.output_zero_point = HS_MODEL_OUTPUT_ZERO_POINT;
    id.normal_index = HS_MODEL_NORMAL_INDEX;
    id.device_id = s_device_id;
    id.firmware_version = HS_FIRMWARE_VERSION;
    id.class_names = s_class_names;
    id.n_classes = HS_MODEL_N_CLASSES;
    *type = HS_MSG_IDENTIFY;
    *len = hs_proto_build_identify(&id, s_payload, sizeof s_payload);
    return fault(0, NULL);
}

static fault_t on_start(const hs_proto_frame *f, uint8_t *type, size_t *len)
{
    hs_proto_start start;
    if (hs_proto_parse_start(f, &start) != 0) return fault(HS_ERR_BAD_PAYLOAD, "bad START");
    if (s_session.active) return fault(HS_ERR_BUSY, "a session is running; send ABORT first");
    if (start.sample_rate_hz != HS_SAMPLE_RATE_HZ) {
        return fault(HS_ERR_WRONG_RATE, "model runs at " HS_MODEL_SAMPLE_RATE_TEXT " Hz");
    }
    if ((start.flags & HS_PROTO_FLAG_FEATURES) && !FEATURES_FIT) {
        return fault(HS_ERR_BAD_PAYLOAD, "feature windows do not fit a frame");
    }
    memset(&s_session, 0, sizeof s_session);
    memset(&s_stats, 0, sizeof s_stats); /* figures per session */
    hs_mfcc_stream_init(&s_session.stream);
    hs_mfcc_stats_init(&s_session.stats);
    s_session.active = 1u;
    s_session.features = (uint8_t)(start.flags & HS_PROTO_FLAG_FEATURES);
    s_session.expected = start.expected_samples;
    s_session.last_seq = f->seq;
    *type = HS_MSG_ACK;
    *len = ack(HS_MSG_START);
    return fault(0, NULL);
}

static fault_t on_audio(const hs_proto_frame *f, uint8_t *type, size_t *len)
{
    session_t *s = &s_session;
    const uint8_t *samples;
    uint32_t offset;
    size_t n, i, frames;
    uint64_t start;
    int done = 0;
    int8_t scores[HS_MODEL_N_CLASSES];
    int16_t pcm[MAX_CHUNK];
    int16_t rows[HS_MFCC_MAX_FRAMES(MAX_CHUNK)][HS_N_CEPS];
    if (!s->active) return fault(HS_ERR_NO_SESSION, "no session: send START first");
    if (hs_proto_parse_audio(f, &offset, &samples, &n) != 0) {
        return fault(HS_ERR_BAD_PAYLOAD, "AUDIO is not an offset and whole int16 samples");
    }
    if (n > MAX_CHUNK) return fault(HS_ERR_BAD_PAYLOAD, "chunk longer than max_chunk_samples");
    if (f->seq != (uint16_t)(s->last_seq + 1u) || offset != s->received) {
        return fault(HS_ERR_BAD_SEQUENCE, "AUDIO seq or sample offset is not the next one");
    }
    s->last_seq = f->seq;
    s->received += (uint32_t)n;
    for (i = 0; i < n; i++) pcm[i] = hs_proto_sample(samples, i); /* the payload is unaligned */
    start = hs_platform_ticks();
    frames = hs_mfcc_stream_push(&s->stream, pcm, n, rows[0]); /* q8.7 cepstra per frame */
    s_stats.frontend_ticks += hs_platform_ticks() - start;
    s_stats.frames += (uint32_t)frames;
    for (i = 0; i < frames; i++) { /* in order: a window is scored on the row ending it */
        if (push_row(rows[i])) {
            if (score_window(scores) != 0) {
                s->active = 0u;
                return fault(HS_ERR_INTERNAL, "model invoke failed");
            }
            done = 1; /* MAX_CHUNK <= hop: at most one window per chunk */
        }
    }
    if (!done) {
        *type = HS_MSG_ACK;
        *len = ack(HS_MSG_AUDIO);
        return fault(0, NULL);
    }
    for (i = 0; i < HS_MODEL_N_CLASSES; i++) {
        s->score_sums[i] += scores[i];
        /* p = scale * (q - zero point), in float32 as edge's Quantisation.dequantise */
        s->prob_sums[i] += (double)((float)(scores[i] - HS_MODEL_OUTPUT_ZERO_POINT) *
                                    HS_MODEL_OUTPUT_SCALE);
    }
    *type = HS_MSG_RESULT;
    *len = hs_proto_build_result(s->windows, s->received, scores, HS_MODEL_N_CLASSES,
                                 s->features ? s_window : NULL, HS_FRAMES_PER_WINDOW,
                                 HS_N_CEPS, s_payload, sizeof s_payload);
    s->windows++;
    s_stats.windows++;
    return fault(0, NULL);
}

static fault_t on_end(const hs_proto_frame *f, uint8_t *type, size_t *len)
{
    session_t *s = &s_session;
    uint8_t decision = HS_DECISION_NO_WINDOWS;
    float prob = NAN; /* no windows */
    if (hs_proto_parse_empty(f) != 0) return fault(HS_ERR_BAD_PAYLOAD, "END carries nothing");
    if (!s->active) return fault(HS_ERR_NO_SESSION, "no session: send START first");
    s->active = 0u;
    if (s->expected && s->expected != s->received) {
        return fault(HS_ERR_BAD_SEQUENCE, "END: START announced another sample count");
    }
    if (s->windows) { /* edge.decision: P(abnormal) = 1 - mean P(normal) >= threshold */
        const double p = 1.0 - s->prob_sums[HS_MODEL_NORMAL_INDEX] / s->windows;
        decision = p >= HS_MODEL_THRESHOLD ? HS_DECISION_ABNORMAL : HS_DECISION_NORMAL;
        prob = (float)p;
    }
#if HS_DEVICE_TRACE
    printf("HS_FRONTEND %lu %lu\nHS_INVOKES %lu %lu\nHS_STACK_USED %u\n",
           (unsigned long)s_stats.frames, (unsigned long)s_stats.frontend_ticks,
           (unsigned long)s_stats.windows, (unsigned long)s_stats.invoke_ticks,
           (unsigned)hs_platform_stack_used());
    fflush(stdout);
#endif
    *type = HS_MSG_DONE;
    *len = hs_proto_build_done(decision, prob, s->windows, s->received, s->score_sums,
                               HS_MODEL_N_CLASSES, s_payload, sizeof s_payload);
    return fault(0, NULL);
}

static fault_t on_abort(const hs_proto_frame *f, uint8_t *type, size_t *len)
{
    if (hs_proto_parse_empty(f) != 0) return fault(HS_ERR_BAD_PAYLOAD, "ABORT carries nothing");
    s_session.active = 0u;
    *type = HS_MSG_ACK;
    *len = hs_proto_build_ack(HS_MSG_ABORT, 0u, 0u, s_payload, sizeof s_payload);
    return fault(0, NULL);
}

static void on_frame(const hs_proto_frame *f)
{
    uint8_t type = HS_MSG_ERROR;
    size_t len = 0;
    fault_t result;
    if (hs_proto_is_repeat(&s_last, f)) { /* the answer was lost: send it again, do not redo */
        hs_serial_write(s_answer, s_answer_len);
        return;
    }
    switch (f->type) {
    case HS_MSG_HELLO: result = on_hello(f, &type, &len); break;
    case HS_MSG_START: result = on_start(f, &type, &len); break;
    case HS_MSG_AUDIO: result = on_audio(f, &type, &len); break;
    case HS_MSG_END: result = on_end(f, &type, &len); break;
    case HS_MSG_ABORT: result = on_abort(f, &type, &len); break;
    default: result = fault(HS_ERR_UNKNOWN_TYPE, "unknown message type"); break;
    }
    hs_proto_remember(&s_last, f);
    if (result.code != 0u) {
        send_error(result.code, f->type, f->seq, result.message);
    } else if (len == 0u) { /* a builder ran out of room: a bug, not the host's fault */
        send_error(HS_ERR_INTERNAL, f->type, f->seq, "answer does not fit");
    } else {
        send_frame(type, f->seq, len);
    }
}

void hs_device_byte(uint8_t byte)
{
    hs_proto_frame frame;
    hs_proto_reject why = HS_REJECT_NONE;
    const hs_proto_event ev = hs_proto_decoder_push(&s_dec, byte, &frame, &why);
    if (ev == HS_PROTO_FRAME) {
        s_nak_sent = 0u;
        on_frame(&frame);
    } else if (ev == HS_PROTO_REJECTED && why == HS_REJECT_VERSION) {
        /* not cached: the last request stays the one a repeat is checked against */
        const size_t len = hs_proto_build_error(HS_ERR_UNSUPPORTED_VERSION, frame.type,
                                                "device speaks protocol v1",
                                                s_payload, sizeof s_payload);
        uint8_t wire[HS_PROTO_WIRE_SIZE(64u)];
        hs_serial_write(wire, hs_proto_encode(HS_MSG_ERROR, frame.seq, s_payload, len, wire,
                                              sizeof wire));
    } else if (ev == HS_PROTO_REJECTED && !s_nak_sent) {
        const size_t len = hs_proto_build_error(HS_ERR_BAD_CRC, 0u, "frame rejected",
                                                s_payload, sizeof s_payload);
        uint8_t wire[HS_PROTO_WIRE_SIZE(64u)];
        s_nak_sent = 1u;
        hs_serial_write(wire, hs_proto_encode(HS_MSG_ERROR, HS_PROTO_NAK_SEQ, s_payload, len,
                                              wire, sizeof wire));
    }
}
