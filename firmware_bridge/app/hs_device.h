/* hs_device.h: the device side of serial protocol v1 (docs/serial_protocol.md, section 7).
 *
 * Bytes from the serial channel in, answers out through hs_serial_write (platform.h). In
 * between: the COBS/CRC decoder (hs_proto), the streaming fixed-point front end (hs_mfcc,
 * one push per AUDIO chunk),
 * a ring of the last HS_FRAMES_PER_WINDOW feature rows, the running statistics of every
 * row of the recording (hs_mfcc_stats, 216 bytes for 13 cepstra), the normalisation of
 * HS_NORMALISE (per window, or by those statistics at the window's last row), the
 * integer int8 input quantisation of edge.interpreter.quantise_features, and the model
 * (model_runner.h). It is the C twin of firmware_bridge/emulator.py's Device and gives
 * the same bytes for the same requests.
 *
 * Contract: one device per image, all state static (about 10 KB of RAM with features
 * enabled), no heap, no timers (a partial frame is ended by the host's next 0x00). Call
 * hs_model_init() successfully before hs_device_init(). Not reentrant.
 */
#ifndef HS_DEVICE_H_
#define HS_DEVICE_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Samples per AUDIO chunk the device accepts: 256 ms at 2 kHz, one 1 KB frame on the wire
 * (capped at the window hop so that one chunk completes at most one window). */
#ifndef HS_DEVICE_MAX_CHUNK
#define HS_DEVICE_MAX_CHUNK 512u
#endif

/* Reset the protocol state: no session, no cached answer, an empty receive buffer. */
void hs_device_init(void);

/* Feed one received byte; answers (if the byte ends a frame) are written at once. */
void hs_device_byte(uint8_t byte);

/* Figures for benchmarks, of the current or last session (reset by START): front-end
 * frames computed and the platform ticks of the chunk pushes that computed them, windows
 * run and the ticks of their Invoke() calls. */
typedef struct {
    uint32_t frames;
    uint64_t frontend_ticks;
    uint32_t windows;
    uint64_t invoke_ticks;
} hs_device_stats;

const hs_device_stats *hs_device_get_stats(void);

#ifdef __cplusplus
}
#endif

#endif /* HS_DEVICE_H_ */
