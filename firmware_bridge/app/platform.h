/* What differs between the host build and the bare-metal Cortex-M4 build.
 *
 * The app (main.cc, hs_device.c) talks to the world only through these functions:
 * platform_host.c implements them with POSIX, platform_cm4.c with the CMSDK UART, SysTick
 * and semihosting, platform_arduino.cpp with Arduino's Serial. Text output (printf) is the
 * test channel: stdout on the host, semihosting on QEMU. The serial channel is where the
 * protocol runs: the CMSDK UART on the device (a pseudo-terminal with QEMU's -serial pty),
 * a pseudo-terminal the host build opens itself (stdin/stdout before that).
 */
#ifndef HS_PLATFORM_H_
#define HS_PLATFORM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Short name of the build target ("host" or "cortex-m4"), printed at boot. */
extern const char hs_platform_name[];

/* Console, serial channel and tick counter ready; called first in main(). */
void hs_platform_init(void);

/* 1 if hs_platform_ticks() counts (the emulated core under -icount shift=0), else 0. */
int hs_platform_has_ticks(void);

/* Ticks since hs_platform_init(): SysTick on the processor clock, which QEMU with
 * -icount shift=0 advances once per HS_INSTRUCTIONS_PER_TICK instructions. 0 on the host. */
uint64_t hs_platform_ticks(void);
#define HS_INSTRUCTIONS_PER_TICK 40u

/* Switch the serial channel to the port the protocol runs on (after any self-test output).
 * Host: a new pseudo-terminal, whose path is printed as "HS_SERIAL_PORT <path>" (as QEMU
 * prints "char device redirected to <path>"); device: nothing to do (UART0 already). */
int hs_platform_serial_open(void);

/* Write bytes to the serial channel (blocking). */
void hs_serial_write(const uint8_t *data, size_t len);

/* Next byte from the serial channel, or -1 if none arrives (host: end of input or the
 * port failed). Blocks on the host; on a device it polls until a byte arrives or
 * timeout_polls polls pass (HS_SERIAL_FOREVER: until a byte arrives). */
#define HS_SERIAL_FOREVER 0xFFFFFFFFu
int hs_serial_read_byte(uint32_t timeout_polls);

/* Peak stack bytes used so far (0 where not measured). */
size_t hs_platform_stack_used(void);

/* Heap bytes newlib has taken with sbrk (0 where not measured). */
size_t hs_platform_heap_used(void);

#ifdef __cplusplus
}
#endif

#endif  /* HS_PLATFORM_H_ */
