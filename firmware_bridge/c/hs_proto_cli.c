/* hs_proto_cli.c: host driver of hs_proto for the cross-check tests (tests/test_proto_c.py).
 *
 *   hs_proto_cli encode   stdin: records [type u8][seq u16][len u16][payload]  (LE)
 *                         stdout: the wire bytes of each frame, back to back
 *   hs_proto_cli decode   stdin: wire bytes, fed to the decoder one byte at a time
 *                         stdout: one record per event [kind u8][version u8][type u8]
 *                         [seq u16][len u16][payload]; kind 0 = frame, else the
 *                         hs_proto_reject reason (version/type/seq filled for VERSION)
 *   hs_proto_cli build    stdin: text lines naming a payload builder and its arguments
 *                         stdout: the payload in hex, one line each
 *   hs_proto_cli parse    stdin: text lines "start|audio|empty HEX"
 *                         stdout: the parsed fields, or "bad"
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hs_proto.h"

#define MAX_LINE 65536
#define MAX_INPUT (1u << 22)
#define MAX_CLASSES 16
#define MAX_NAME 256

static uint8_t s_in[MAX_INPUT];
static uint8_t s_wire[HS_PROTO_MAX_WIRE];
static uint8_t s_payload[HS_PROTO_MAX_PAYLOAD + 64];
static char s_line[MAX_LINE];
static int16_t s_features[HS_PROTO_MAX_PAYLOAD];
static hs_proto_decoder s_dec;

static size_t read_all(void) { return fread(s_in, 1, sizeof s_in, stdin); }

static int run_encode(void)
{
    size_t n = read_all(), pos = 0;
    while (pos + 5u <= n) {
        const uint8_t type = s_in[pos];
        const uint16_t seq = (uint16_t)(s_in[pos + 1] | (s_in[pos + 2] << 8));
        const size_t len = (size_t)(s_in[pos + 3] | (s_in[pos + 4] << 8));
        size_t wire;
        if (pos + 5u + len > n) return 2;
        wire = hs_proto_encode(type, seq, s_in + pos + 5u, len, s_wire, sizeof s_wire);
        if (wire == 0u) return 3;
        fwrite(s_wire, 1, wire, stdout);
        pos += 5u + len;
    }
    return pos == n ? 0 : 2;
}

static void put_record(uint8_t kind, const hs_proto_frame *f, int with_payload)
{
    uint8_t head[7];
    const uint16_t len = with_payload ? f->length : 0u;
    head[0] = kind;
    head[1] = f->version;
    head[2] = f->type;
    head[3] = (uint8_t)(f->seq & 0xFFu);
    head[4] = (uint8_t)(f->seq >> 8);
    head[5] = (uint8_t)(len & 0xFFu);
    head[6] = (uint8_t)(len >> 8);
    fwrite(head, 1, sizeof head, stdout);
    if (len) fwrite(f->payload, 1, len, stdout);
}

static int run_decode(void)
{
    size_t n = read_all(), i;
    hs_proto_decoder_init(&s_dec);
    for (i = 0; i < n; i++) {
        hs_proto_frame f;
        hs_proto_reject why = HS_REJECT_NONE;
        hs_proto_event ev;
        memset(&f, 0, sizeof f);
        ev = hs_proto_decoder_push(&s_dec, s_in[i], &f, &why);
        if (ev == HS_PROTO_FRAME) {
            put_record(0u, &f, 1);
        } else if (ev == HS_PROTO_REJECTED) {
            if (why != HS_REJECT_VERSION) memset(&f, 0, sizeof f);
            put_record((uint8_t)why, &f, 0);
        }
    }
    return 0;
}

static void print_hex(const uint8_t *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) printf("%02x", p[i]);
    printf("\n");
}

static int hex_to_bytes(const char *hex, uint8_t *out, size_t cap, size_t *n)
{
    size_t len = strlen(hex), i;
    if (len % 2u || len / 2u > cap) return -1;
    for (i = 0; i < len / 2u; i++) {
        unsigned v;
        if (sscanf(hex + 2u * i, "%2x", &v) != 1) return -1;
        out[i] = (uint8_t)v;
    }
    *n = len / 2u;
    return 0;
}

static long next_long(char **cur)
{
    char *end;
    long v = strtol(*cur, &end, 0);
    *cur = end;
    return v;
}

static char *next_word(char **cur)
{
    char *s = *cur, *e;
    while (*s == ' ') s++;
    e = s;
    while (*e && *e != ' ' && *e != '\n') e++;
    if (*e) *e++ = '\0';
    *cur = e;
    return s;
}

static float float_of_bits(unsigned long bits)
{
    uint32_t b = (uint32_t)bits;
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

/* "identify FLAGS CHUNK RATE WIN HOP FPW CEPS MODELHEX SPECHEX THR_BITS SCALE_BITS ZP NORMAL
 *  DEVICE FW N NAME..." (doubles and floats as their bits in hex; names without spaces) */
static size_t build_identify(char *cur)
{
    static char names[MAX_CLASSES][MAX_NAME];
    static const char *name_ptr[MAX_CLASSES];
    static char device[MAX_NAME], fw[MAX_NAME];
    hs_proto_identify id;
    unsigned long long thr_bits;
    size_t got, i;
    memset(&id, 0, sizeof id);
    id.flags = (uint8_t)next_long(&cur);
    id.max_chunk_samples = (uint16_t)next_long(&cur);
    id.sample_rate_hz = (uint32_t)next_long(&cur);
    id.window_samples = (uint32_t)next_long(&cur);
    id.window_hop_samples = (uint32_t)next_long(&cur);
    id.frames_per_window = (uint16_t)next_long(&cur);
    id.n_ceps = (uint16_t)next_long(&cur);
    if (hex_to_bytes(next_word(&cur), id.model_sha256_prefix, 8, &got) || got != 8) return 0;
    if (hex_to_bytes(next_word(&cur), id.spec_sha256_prefix, 8, &got) || got != 8) return 0;
    thr_bits = strtoull(next_word(&cur), NULL, 16);
    memcpy(&id.threshold, &thr_bits, sizeof id.threshold);
    id.output_scale = float_of_bits(strtoul(next_word(&cur), NULL, 16));
    id.output_zero_point = (int8_t)next_long(&cur);
    id.normal_index = (uint8_t)next_long(&cur);
    strncpy(device, next_word(&cur), MAX_NAME - 1);
    strncpy(fw, next_word(&cur), MAX_NAME - 1);
    id.device_id = device;
    id.firmware_version = fw;
    id.n_classes = (uint8_t)next_long(&cur);
    if (id.n_classes > MAX_CLASSES) return 0;
    for (i = 0; i < id.n_classes; i++) {
        strncpy(names[i], next_word(&cur), MAX_NAME - 1);
        name_ptr[i] = names[i];
    }
    id.class_names = name_ptr;
    return hs_proto_build_identify(&id, s_payload, sizeof s_payload);
}

/* "result INDEX SAMPLES N s... ROWS COLS f..." */
static size_t build_result(char *cur)
{
    int8_t scores[256];
    long index = next_long(&cur), samples = next_long(&cur), n = next_long(&cur);
    long rows, cols, i;
    if (n < 0 || n > 255) return 0;
    for (i = 0; i < n; i++) scores[i] = (int8_t)next_long(&cur);
    rows = next_long(&cur);
    cols = next_long(&cur);
    if (rows * cols > (long)(sizeof s_features / sizeof s_features[0])) return 0;
    for (i = 0; i < rows * cols; i++) s_features[i] = (int16_t)next_long(&cur);
    return hs_proto_build_result((uint16_t)index, (uint32_t)samples, scores, (uint8_t)n,
                                 (rows > 0 && cols > 0) ? s_features : NULL, (uint16_t)rows,
                                 (uint16_t)cols, s_payload, sizeof s_payload);
}

/* "done DECISION PROB_BITS WINDOWS SAMPLES N sum..." */
static size_t build_done(char *cur)
{
    int32_t sums[256];
    long decision = next_long(&cur);
    float prob = float_of_bits(strtoul(next_word(&cur), NULL, 16));
    long windows = next_long(&cur), samples = next_long(&cur), n = next_long(&cur), i;
    if (n < 0 || n > 255) return 0;
    for (i = 0; i < n; i++) sums[i] = (int32_t)next_long(&cur);
    return hs_proto_build_done((uint8_t)decision, prob, (uint16_t)windows, (uint32_t)samples,
                               sums, (uint8_t)n, s_payload, sizeof s_payload);
}

static size_t build_line(char *line)
{
    char *cur = line;
    const char *what = next_word(&cur);
    if (strcmp(what, "identify") == 0) return build_identify(cur);
    if (strcmp(what, "result") == 0) return build_result(cur);
    if (strcmp(what, "done") == 0) return build_done(cur);
    if (strcmp(what, "ack") == 0) {
        long t = next_long(&cur), s = next_long(&cur), w = next_long(&cur);
        return hs_proto_build_ack((uint8_t)t, (uint32_t)s, (uint16_t)w, s_payload,
                                  sizeof s_payload);
    }
    if (strcmp(what, "error") == 0) { /* "error CODE TYPE MESSAGE-TO-END-OF-LINE" */
        long code = next_long(&cur), type = next_long(&cur);
        char *nl = strchr(cur, '\n');
        if (nl) *nl = '\0';
        if (*cur == ' ') cur++;
        return hs_proto_build_error((uint8_t)code, (uint8_t)type, cur, s_payload,
                                    sizeof s_payload);
    }
    return 0;
}

static int run_build(void)
{
    while (fgets(s_line, sizeof s_line, stdin)) {
        size_t n = build_line(s_line);
        if (n == 0u) {
            printf("bad\n");
        } else {
            print_hex(s_payload, n);
        }
    }
    return 0;
}

static void parse_line(char *line)
{
    char *cur = line;
    const char *what = next_word(&cur);
    hs_proto_frame f;
    size_t n = 0;
    memset(&f, 0, sizeof f);
    if (hex_to_bytes(next_word(&cur), s_payload, sizeof s_payload, &n)) {
        printf("bad\n");
        return;
    }
    f.payload = s_payload;
    f.length = (uint16_t)n;
    if (strcmp(what, "start") == 0) {
        hs_proto_start st;
        if (hs_proto_parse_start(&f, &st)) {
            printf("bad\n");
        } else {
            printf("%lu %lu %u\n", (unsigned long)st.sample_rate_hz,
                   (unsigned long)st.expected_samples, (unsigned)st.flags);
        }
    } else if (strcmp(what, "audio") == 0) {
        uint32_t offset;
        const uint8_t *samples;
        size_t count, i;
        if (hs_proto_parse_audio(&f, &offset, &samples, &count)) {
            printf("bad\n");
            return;
        }
        printf("%lu", (unsigned long)offset);
        for (i = 0; i < count; i++) printf(" %d", hs_proto_sample(samples, i));
        printf("\n");
    } else {
        printf(hs_proto_parse_empty(&f) ? "bad\n" : "ok\n");
    }
}

static int run_parse(void)
{
    while (fgets(s_line, sizeof s_line, stdin)) parse_line(s_line);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: hs_proto_cli encode|decode|build|parse\n");
        return 1;
    }
    if (strcmp(argv[1], "encode") == 0) return run_encode();
    if (strcmp(argv[1], "decode") == 0) return run_decode();
    if (strcmp(argv[1], "build") == 0) return run_build();
    if (strcmp(argv[1], "parse") == 0) return run_parse();
    fprintf(stderr, "hs_proto_cli: unknown mode %s\n", argv[1]);
    return 1;
}
