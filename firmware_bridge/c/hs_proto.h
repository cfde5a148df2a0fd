/* hs_proto.h: heartsound serial protocol v1 (docs/serial_protocol.md) in C99.
 *
 * Bit-for-bit twin of firmware_bridge/protocol.py (tests/test_proto_c.py checks random
 * frames both ways). Contract:
 * - No malloc, no globals: the caller owns every buffer and the decoder state. The
 *   decoder holds one raw frame (HS_PROTO_MAX_RAW bytes, ~2 KB) and decodes COBS as bytes
 *   arrive, so there is no second, encoded copy.
 * - A decoded frame's payload points into the decoder and stays valid until the next
 *   hs_proto_decoder_push().
 * - Frames are "0x00 COBS(version type seq length payload crc32) 0x00", little-endian,
 *   CRC-32/ISO-HDLC (zlib's) over header and payload.
 * - Builders write a message payload into out[0..cap) and return its length, or 0 when
 *   cap is too small; parsers return 0 on success and -1 for a malformed payload
 *   (answer ERROR BAD_PAYLOAD).
 * - Portable C99; floats and doubles are sent as their IEEE-754 bits (every target here).
 */
#ifndef HS_PROTO_H
#define HS_PROTO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HS_PROTO_VERSION 1u
#define HS_PROTO_HEADER_SIZE 6u
#define HS_PROTO_CRC_SIZE 4u
/* Largest payload of protocol v1. A device that only ever receives small frames may
 * define a smaller value to save RAM: longer frames are then rejected as too long. */
#ifndef HS_PROTO_MAX_PAYLOAD
#define HS_PROTO_MAX_PAYLOAD 2048u
#endif
#define HS_PROTO_MAX_RAW (HS_PROTO_HEADER_SIZE + HS_PROTO_MAX_PAYLOAD + HS_PROTO_CRC_SIZE)
#define HS_PROTO_MAX_ENCODED (HS_PROTO_MAX_RAW + (HS_PROTO_MAX_RAW + 253u) / 254u)
/* Bytes of one frame on the wire, both delimiters included: size of a transmit buffer. */
#define HS_PROTO_MAX_WIRE (HS_PROTO_MAX_ENCODED + 2u)
#define HS_PROTO_WIRE_SIZE(payload_len) \
    (HS_PROTO_HEADER_SIZE + (payload_len) + HS_PROTO_CRC_SIZE \
     + (HS_PROTO_HEADER_SIZE + (payload_len) + HS_PROTO_CRC_SIZE + 253u) / 254u + 2u)

/* Message types: host requests below 0x80, device answers above. */
enum {
    HS_MSG_HELLO = 0x01, HS_MSG_START = 0x02, HS_MSG_AUDIO = 0x03, HS_MSG_END = 0x04,
    HS_MSG_ABORT = 0x05,
    HS_MSG_IDENTIFY = 0x81, HS_MSG_ACK = 0x82, HS_MSG_RESULT = 0x83, HS_MSG_DONE = 0x84,
    HS_MSG_ERROR = 0xFF
};

/* ERROR codes (the ERROR layout is frozen across protocol versions). */
enum {
    HS_ERR_BAD_CRC = 1, HS_ERR_BAD_SEQUENCE = 2, HS_ERR_UNSUPPORTED_VERSION = 3,
    HS_ERR_WRONG_RATE = 4, HS_ERR_BUSY = 5, HS_ERR_INTERNAL = 6, HS_ERR_BAD_PAYLOAD = 7,
    HS_ERR_UNKNOWN_TYPE = 8, HS_ERR_NO_SESSION = 9
};

enum { HS_DECISION_NORMAL = 0, HS_DECISION_ABNORMAL = 1, HS_DECISION_NO_WINDOWS = 2 };

#define HS_PROTO_FLAG_FEATURES 0x01u /* IDENTIFY: can send features; START: send them */
#define HS_PROTO_NAK_SEQ 0xFFFFu     /* seq of a BAD_CRC error */

/* Why bytes between two delimiters were not a frame (same order as protocol.py). */
typedef enum {
    HS_REJECT_NONE = 0,
    HS_REJECT_COBS = 1,     /* a COBS block runs past the delimiter */
    HS_REJECT_SHORT = 2,    /* fewer bytes than header + CRC */
    HS_REJECT_LENGTH = 3,   /* length field disagrees with the size, or > max payload */
    HS_REJECT_CRC = 4,      /* CRC-32 mismatch */
    HS_REJECT_VERSION = 5,  /* intact frame of another version: answer UNSUPPORTED_VERSION */
    HS_REJECT_TOO_LONG = 6  /* more than HS_PROTO_MAX_ENCODED bytes before the delimiter */
} hs_proto_reject;

typedef enum { HS_PROTO_NOTHING = 0, HS_PROTO_FRAME = 1, HS_PROTO_REJECTED = 2 } hs_proto_event;

typedef struct {
    uint8_t version;
    uint8_t type;
    uint16_t seq;
    uint16_t length;         /* payload bytes */
    const uint8_t *payload;  /* into the decoder's buffer */
    uint32_t crc;            /* the frame's CRC: with seq and type, identifies a repeat */
} hs_proto_frame;

typedef struct {
    uint8_t raw[HS_PROTO_MAX_RAW];
    size_t raw_len;    /* decoded bytes kept */
    size_t enc_len;    /* encoded bytes since the last delimiter */
    uint8_t left;      /* bytes still due in the current COBS block */
    uint8_t code;      /* code byte of the current block; 0 before the first */
    uint8_t raw_full;  /* decoded bytes did not fit raw[] */
} hs_proto_decoder;

/* CRC-32/ISO-HDLC, chainable like zlib: crc = hs_proto_crc32(0, a, n); then (crc, b, m). */
uint32_t hs_proto_crc32(uint32_t crc, const uint8_t *data, size_t n);

/* One whole frame on the wire (0x00 COBS 0x00) into out; returns its length, 0 if cap is
 * too small or len > HS_PROTO_MAX_PAYLOAD. */
size_t hs_proto_encode(uint8_t type, uint16_t seq, const uint8_t *payload, size_t len,
                       uint8_t *out, size_t cap);

void hs_proto_decoder_init(hs_proto_decoder *d);

/* Feed one received byte. Returns HS_PROTO_FRAME with *frame filled when the byte ends an
 * intact frame of this version, HS_PROTO_REJECTED with *why set when it ends damaged bytes
 * (for HS_REJECT_VERSION, frame->version/type/seq are filled too), else HS_PROTO_NOTHING.
 * Empty runs between delimiters are skipped. */
hs_proto_event hs_proto_decoder_push(hs_proto_decoder *d, uint8_t byte, hs_proto_frame *frame,
                                     hs_proto_reject *why);

/* ---- stop-and-wait: is a request the repeat of the last one? ------------------------ */
typedef struct {
    uint8_t valid;
    uint8_t type;
    uint16_t seq;
    uint32_t crc;
} hs_proto_request_id;

/* 1 if f repeats the remembered request (answer it again from the cache, do not redo it). */
int hs_proto_is_repeat(const hs_proto_request_id *last, const hs_proto_frame *f);
void hs_proto_remember(hs_proto_request_id *last, const hs_proto_frame *f);

/* ---- host -> device payloads ---------------------------------------------------------- */
typedef struct {
    uint32_t sample_rate_hz;
    uint32_t expected_samples; /* 0: unknown */
    uint8_t flags;             /* HS_PROTO_FLAG_FEATURES */
} hs_proto_start;

int hs_proto_parse_empty(const hs_proto_frame *f); /* HELLO, END, ABORT */
int hs_proto_parse_start(const hs_proto_frame *f, hs_proto_start *out);
/* AUDIO: offset of the first sample and count samples as little-endian bytes (read them
 * with hs_proto_sample: the payload is not 2-byte aligned). */
int hs_proto_parse_audio(const hs_proto_frame *f, uint32_t *offset, const uint8_t **samples,
                         size_t *count);
int16_t hs_proto_sample(const uint8_t *samples, size_t i);

/* ---- device -> host payloads ---------------------------------------------------------- */
typedef struct {
    uint8_t flags;
    uint16_t max_chunk_samples;
    uint32_t sample_rate_hz;
    uint32_t window_samples;
    uint32_t window_hop_samples;
    uint16_t frames_per_window;
    uint16_t n_ceps;
    uint8_t model_sha256_prefix[8];
    uint8_t spec_sha256_prefix[8];
    double threshold;
    float output_scale;
    int8_t output_zero_point;
    uint8_t normal_index;
    const char *device_id;
    const char *firmware_version;
    const char *const *class_names;
    uint8_t n_classes;
} hs_proto_identify;

size_t hs_proto_build_identify(const hs_proto_identify *id, uint8_t *out, size_t cap);
size_t hs_proto_build_ack(uint8_t acked_type, uint32_t samples_received, uint16_t windows_done,
                          uint8_t *out, size_t cap);
/* features: rows x cols int16 (the normalised window), or NULL for none. */
size_t hs_proto_build_result(uint16_t window_index, uint32_t samples_received,
                             const int8_t *scores, uint8_t n_scores, const int16_t *features,
                             uint16_t rows, uint16_t cols, uint8_t *out, size_t cap);
size_t hs_proto_build_done(uint8_t decision, float probability_abnormal, uint16_t windows,
                           uint32_t samples_received, const int32_t *score_sums,
                           uint8_t n_classes, uint8_t *out, size_t cap);
size_t hs_proto_build_error(uint8_t code, uint8_t offending_type, const char *message,
                            uint8_t *out, size_t cap);

#ifdef __cplusplus
}
#endif

#endif /* HS_PROTO_H */
