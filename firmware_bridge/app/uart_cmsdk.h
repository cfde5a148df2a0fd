/* Arm CMSDK APB UART in poll mode (UART0 of QEMU's mps2-an386 at 0x40004000).
 *
 * No interrupts and no buffering: a write waits while the TX holding register is full, a
 * read polls the RX-full flag. QEMU ignores the baud rate, a real board does not: set
 * BAUDDIV = core clock / baud (at least 16).
 */
#ifndef HS_UART_CMSDK_H_
#define HS_UART_CMSDK_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HS_UART0_BASE 0x40004000u

void hs_uart_init(uint32_t base, uint32_t bauddiv);
void hs_uart_putc(uint32_t base, uint8_t byte);
void hs_uart_write(uint32_t base, const uint8_t *data, size_t len);
/* 1 and the byte in *byte if one has arrived, else 0 (never blocks). */
int hs_uart_try_getc(uint32_t base, uint8_t *byte);

#ifdef __cplusplus
}
#endif

#endif  /* HS_UART_CMSDK_H_ */
