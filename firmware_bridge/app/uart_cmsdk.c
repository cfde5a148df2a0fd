/* CMSDK APB UART, poll mode; register map from the CMSDK technical reference manual. */
#include "uart_cmsdk.h"

#define UART_DATA(base) (*(volatile uint32_t *)((base) + 0x00u))
#define UART_STATE(base) (*(volatile uint32_t *)((base) + 0x04u))
#define UART_CTRL(base) (*(volatile uint32_t *)((base) + 0x08u))
#define UART_BAUDDIV(base) (*(volatile uint32_t *)((base) + 0x10u))

#define UART_STATE_TX_FULL 0x1u
#define UART_STATE_RX_FULL 0x2u
#define UART_CTRL_TX_EN 0x1u
#define UART_CTRL_RX_EN 0x2u
#define UART_BAUDDIV_MIN 16u

void hs_uart_init(uint32_t base, uint32_t bauddiv) {
  UART_BAUDDIV(base) = bauddiv < UART_BAUDDIV_MIN ? UART_BAUDDIV_MIN : bauddiv;
  UART_CTRL(base) = UART_CTRL_TX_EN | UART_CTRL_RX_EN;
}

void hs_uart_putc(uint32_t base, uint8_t byte) {
  while (UART_STATE(base) & UART_STATE_TX_FULL) {
  }
  UART_DATA(base) = byte;
}

void hs_uart_write(uint32_t base, const uint8_t *data, size_t len) {
  for (size_t i = 0; i < len; ++i) hs_uart_putc(base, data[i]);
}

int hs_uart_try_getc(uint32_t base, uint8_t *byte) {
  if (!(UART_STATE(base) & UART_STATE_RX_FULL)) return 0;
  *byte = (uint8_t)(UART_DATA(base) & 0xFFu);
  return 1;
}
