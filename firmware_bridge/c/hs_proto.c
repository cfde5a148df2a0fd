/* hs_proto.c: heartsound serial protocol v1, C99, no malloc (see hs_proto.h). */
#include "hs_proto.h"

#include <string.h>

#define CRC_INIT 0xFFFFFFFFu
#define CRC_POLY_REFLECTED 0xEDB88320u
#define COBS_MAX_BLOCK 254u

/* Nibble table of the reflected polynomial: 64 bytes of flash, two lookups per byte. */
static const uint32_t s_crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
    0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
    0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu};

uint32_t hs_proto_crc32(uint32_t crc, const uint8_t *data, size_t n)
{
    uint32_t c = crc ^ CRC_INIT;
    size_t i;
    for (i = 0; i < n; i++) {
        c ^= data[i];
        c = (c >> 4) ^ s_crc_nibble[c & 0x0Fu];
        c = (c >> 4) ^ s_crc_nibble[c & 0x0Fu];
    }
    return c ^ CRC_INIT;
}

/* ---- little-endian helpers ------------------------------------------------------------ */
static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
    p[2] = (uint8_t)((v >> 16) & 0xFFu);
    p[3] = (uint8_t)(v >> 24);
}

static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16)
           | ((uint32_t)p[3] << 24);
}

/* ---- COBS encoder, fed byte by byte so header, payload and CRC need no joint copy ------ */
typedef struct {
    uint8_t *out;
    size_t cap;
    size_t pos;      /* next free byte */
    size_t code_pos; /* where the current block's code byte goes */
    uint8_t code;    /* 1 + bytes in the current block */
    int overflow;
} cobs_writer;

static void cw_emit(cobs_writer *w, size_t at, uint8_t byte)
{
    if (at < w->cap) {
        w->out[at] = byte;
    } else {
        w->overflow = 1;
    }
}

static void cw_begin(cobs_writer *w, uint8_t *out, size_t cap, size_t start)
{
    w->out = out;
    w->cap = cap;
    w->code_pos = start;
    w->pos = start + 1u;
    w->code = 1u;
    w->overflow = 0;
}

static void cw_close_block(cobs_writer *w)
{
    cw_emit(w, w->code_pos, w->code);
    w->code_pos = w->pos++;
    w->code = 1u;
}

static void cw_put(cobs_writer *w, uint8_t byte)
{
    if (byte == 0u) {
        cw_close_block(w);
        return;
    }
    cw_emit(w, w->pos++, byte);
    w->code++;
    if (w->code == COBS_MAX_BLOCK + 1u) {
        cw_close_block(w);
    }
}

static void cw_put_all(cobs_writer *w, const uint8_t *data, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        cw_put(w, data[i]);
    }
}

size_t hs_proto_encode(uint8_t type, uint16_t seq, const uint8_t *payload, size_t len,
                       uint8_t *out, size_t cap)
{
    uint8_t header[HS_PROTO_HEADER_SIZE];
    uint8_t crc_le[HS_PROTO_CRC_SIZE];
    cobs_writer w;
    uint32_t crc;
    if (len > HS_PROTO_MAX_PAYLOAD || cap < 2u || (len > 0u && payload == NULL)) {
        return 0;
    }
    header[0] = (uint8_t)HS_PROTO_VERSION;
    header[1] = type;
    put_u16(header + 2, seq);
    put_u16(header + 4, (uint16_t)len);
    crc = hs_proto_crc32(0u, header, sizeof header);
    crc = hs_proto_crc32(crc, payload, len);
    put_u32(crc_le, crc);
    out[0] = 0u; /* leading delimiter: ends whatever partial frame the receiver holds */
    cw_begin(&w, out, cap, 1u);
    cw_put_all(&w, header, sizeof header);
    cw_put_all(&w, payload, len);
    cw_put_all(&w, crc_le, sizeof crc_le);
    cw_emit(&w, w.code_pos, w.code); /* last block: its implicit trailing zero is dropped */
    cw_emit(&w, w.pos, 0u);          /* trailing delimiter */
    return w.overflow ? 0u : w.pos + 1u;
}

/* ---- decoder -------------------------------------------------------------------------- */
void hs_proto_decoder_init(hs_proto_decoder *d)
{
    d->raw_len = 0;
    d->enc_len = 0;
    d->left = 0;
    d->code = 0;
    d->raw_full = 0;
}

static void dec_keep(hs_proto_decoder *d, uint8_t byte)
{
    if (d->raw_len < sizeof d->raw) {
        d->raw[d->raw_len++] = byte;
    } else {
        d->raw_full = 1;
    }
}

static void dec_byte(hs_proto_decoder *d, uint8_t byte)
{
    d->enc_len++;
    if (d->enc_len > HS_PROTO_MAX_ENCODED) {
        return; /* too long: only counted, judged at the delimiter */
    }
    if (d->left == 0u) { /* a code byte: the block before it ended with a zero, unless 0xFF */
        if (d->code != 0u && d->code != 0xFFu) {
            dec_keep(d, 0u);
        }
        d->code = byte;
        d->left = (uint8_t)(byte - 1u);
        return;
    }
    dec_keep(d, byte);
    d->left--;
}

/* Checks in the order of protocol.py's decode_raw. */
static hs_proto_reject dec_check(const hs_proto_decoder *d, hs_proto_frame *f)
{
    size_t payload_len;
    if (d->enc_len > HS_PROTO_MAX_ENCODED) return HS_REJECT_TOO_LONG;
    if (d->left != 0u) return HS_REJECT_COBS;
    if (d->raw_full) return HS_REJECT_LENGTH;
    if (d->raw_len < HS_PROTO_HEADER_SIZE + HS_PROTO_CRC_SIZE) return HS_REJECT_SHORT;
    payload_len = d->raw_len - HS_PROTO_HEADER_SIZE - HS_PROTO_CRC_SIZE;
    f->version = d->raw[0];
    f->type = d->raw[1];
    f->seq = get_u16(d->raw + 2);
    f->length = get_u16(d->raw + 4);
    if (f->length != payload_len || payload_len > HS_PROTO_MAX_PAYLOAD) return HS_REJECT_LENGTH;
    f->crc = get_u32(d->raw + d->raw_len - HS_PROTO_CRC_SIZE);
    if (f->crc != hs_proto_crc32(0u, d->raw, d->raw_len - HS_PROTO_CRC_SIZE)) {
        return HS_REJECT_CRC;
    }
    if (f->version != HS_PROTO_VERSION) return HS_REJECT_VERSION;
    f->payload = d->raw + HS_PROTO_HEADER_SIZE;
    return HS_REJECT_NONE;
}

hs_proto_event hs_proto_decoder_push(hs_proto_decoder *d, uint8_t byte, hs_proto_frame *frame,
                                     hs_proto_reject *why)
{
    hs_proto_reject r;
    if (byte != 0u) {
        dec_byte(d, byte);
        return HS_PROTO_NOTHING;
    }
    if (d->enc_len == 0u) {
        return HS_PROTO_NOTHING; /* empty run: a leading delimiter */
    }
    r = dec_check(d, frame);
    /* raw[] is reused from the next byte on; the frame's payload stays valid until then */
    d->enc_len = 0;
    d->left = 0;
    d->code = 0;
    d->raw_full = 0;
    d->raw_len = 0;
    *why = r;
    return r == HS_REJECT_NONE ? HS_PROTO_FRAME : HS_PROTO_REJECTED;
}

/* ---- stop-and-wait --------------------------------------------------------------------- */
int hs_proto_is_repeat(const hs_proto_request_id *last, const hs_proto_frame *f)
{
    return last->valid && last->seq == f->seq && last->type == f->type && last->crc == f->crc;
}

void hs_proto_remember(hs_proto_request_id *last, const hs_proto_frame *f)
{
    last->valid = 1u;
    last->seq = f->seq;
    last->type = f->type;
    last->crc = f->crc;
}

/* ---- host -> device payloads ----------------------------------------------------------- */
int hs_proto_parse_empty(const hs_proto_frame *f) { return f->length == 0u ? 0 : -1; }

int hs_proto_parse_start(const hs_proto_frame *f, hs_proto_start *out)
{
    if (f->length != 9u) return -1;
    out->sample_rate_hz = get_u32(f->payload);
    out->expected_samples = get_u32(f->payload + 4);
    out->flags = f->payload[8];
    return 0;
}

int hs_proto_parse_audio(const hs_proto_frame *f, uint32_t *offset, const uint8_t **samples,
                         size_t *count)
{
    if (f->length < 6u || (f->length - 4u) % 2u != 0u) return -1;
    *offset = get_u32(f->payload);
    *samples = f->payload + 4;
    *count = (f->length - 4u) / 2u;
    return 0;
}

int16_t hs_proto_sample(const uint8_t *samples, size_t i)
{
    const uint16_t u = get_u16(samples + 2u * i);
    return (int16_t)(u >= 0x8000u ? (int32_t)u - 0x10000 : (int32_t)u);
}

/* ---- device -> host payloads ----------------------------------------------------------- */
typedef struct {
    uint8_t *out;
    size_t cap;
    size_t pos;
    int overflow;
} writer;

static uint8_t *w_room(writer *w, size_t n)
{
    uint8_t *p;
    if (w->overflow || w->cap - w->pos < n || w->pos > w->cap) {
        w->overflow = 1;
        return NULL;
    }
    p = w->out + w->pos;
    w->pos += n;
    return p;
}

static void w_u8(writer *w, uint8_t v)
{
    uint8_t *p = w_room(w, 1);
    if (p) p[0] = v;
}

static void w_u16(writer *w, uint16_t v)
{
    uint8_t *p = w_room(w, 2);
    if (p) put_u16(p, v);
}

static void w_u32(writer *w, uint32_t v)
{
    uint8_t *p = w_room(w, 4);
    if (p) put_u32(p, v);
}

static void w_bytes(writer *w, const uint8_t *src, size_t n)
{
    uint8_t *p = w_room(w, n);
    if (p && n) memcpy(p, src, n);
}

static void w_f32(writer *w, float v)
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits); /* IEEE-754 single */
    w_u32(w, bits);
}

static void w_f64(writer *w, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits); /* IEEE-754 double */
    w_u32(w, (uint32_t)(bits & 0xFFFFFFFFu));
    w_u32(w, (uint32_t)(bits >> 32));
}

/* u8 length + UTF-8 bytes, cut at 255 bytes (as protocol.py's _str8). */
static void w_str8(writer *w, const char *s)
{
    size_t n = s ? strlen(s) : 0u;
    if (n > 255u) n = 255u;
    w_u8(w, (uint8_t)n);
    w_bytes(w, (const uint8_t *)s, n);
}

static size_t w_done(const writer *w) { return w->overflow ? 0u : w->pos; }

size_t hs_proto_build_identify(const hs_proto_identify *id, uint8_t *out, size_t cap)
{
    writer w = {out, cap, 0, 0};
    uint8_t i;
    w_u8(&w, (uint8_t)HS_PROTO_VERSION);
    w_u8(&w, id->flags);
    w_u16(&w, id->max_chunk_samples);
    w_u32(&w, id->sample_rate_hz);
    w_u32(&w, id->window_samples);
    w_u32(&w, id->window_hop_samples);
    w_u16(&w, id->frames_per_window);
    w_u16(&w, id->n_ceps);
    w_bytes(&w, id->model_sha256_prefix, 8);
    w_bytes(&w, id->spec_sha256_prefix, 8);
    w_f64(&w, id->threshold);
    w_f32(&w, id->output_scale);
    w_u8(&w, (uint8_t)id->output_zero_point);
    w_u8(&w, id->normal_index);
    w_u8(&w, id->n_classes);
    w_str8(&w, id->device_id);
    w_str8(&w, id->firmware_version);
    for (i = 0; i < id->n_classes; i++) {
        w_str8(&w, id->class_names[i]);
    }
    return w_done(&w);
}

size_t hs_proto_build_ack(uint8_t acked_type, uint32_t samples_received, uint16_t windows_done,
                          uint8_t *out, size_t cap)
{
    writer w = {out, cap, 0, 0};
    w_u8(&w, acked_type);
    w_u32(&w, samples_received);
    w_u16(&w, windows_done);
    return w_done(&w);
}

size_t hs_proto_build_result(uint16_t window_index, uint32_t samples_received,
                             const int8_t *scores, uint8_t n_scores, const int16_t *features,
                             uint16_t rows, uint16_t cols, uint8_t *out, size_t cap)
{
    writer w = {out, cap, 0, 0};
    size_t i, n;
    w_u16(&w, window_index);
    w_u32(&w, samples_received);
    w_u8(&w, n_scores);
    for (i = 0; i < n_scores; i++) {
        w_u8(&w, (uint8_t)scores[i]);
    }
    if (features == NULL) {
        rows = 0;
        cols = 0;
    }
    w_u16(&w, rows);
    w_u16(&w, cols);
    n = (size_t)rows * cols;
    for (i = 0; i < n; i++) {
        w_u16(&w, (uint16_t)features[i]);
    }
    return w_done(&w);
}

size_t hs_proto_build_done(uint8_t decision, float probability_abnormal, uint16_t windows,
                           uint32_t samples_received, const int32_t *score_sums,
                           uint8_t n_classes, uint8_t *out, size_t cap)
{
    writer w = {out, cap, 0, 0};
    uint8_t i;
    w_u8(&w, decision);
    w_f32(&w, probability_abnormal);
    w_u16(&w, windows);
    w_u32(&w, samples_received);
    w_u8(&w, n_classes);
    for (i = 0; i < n_classes; i++) {
        w_u32(&w, (uint32_t)score_sums[i]);
    }
    return w_done(&w);
}

size_t hs_proto_build_error(uint8_t code, uint8_t offending_type, const char *message,
                            uint8_t *out, size_t cap)
{
    writer w = {out, cap, 0, 0};
    w_u8(&w, code);
    w_u8(&w, offending_type);
    w_str8(&w, message);
    return w_done(&w);
}
