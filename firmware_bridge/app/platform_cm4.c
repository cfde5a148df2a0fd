/* platform.h on a bare-metal Cortex-M4 (QEMU mps2-an386): semihosting console, CMSDK UART0
 * as the serial channel, SysTick as the instruction counter. */
#include <stddef.h>
#include <stdint.h>

#include "platform.h"
#include "uart_cmsdk.h"

const char hs_platform_name[] = "cortex-m4";

/* SysTick (Armv7-M system control space). */
#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SYST_CSR_ENABLE 0x1u
#define SYST_CSR_TICKINT 0x2u
#define SYST_CSR_CLKSOURCE_CPU 0x4u
#define SYST_RELOAD_MAX 0x00FFFFFFu /* 24-bit down counter */

/* UART0 divider for 115200 baud at the AN386's 25 MHz (QEMU ignores it). */
#define HS_CORE_CLOCK_HZ 25000000u
#define HS_SERIAL_BAUD 115200u

/* Stack painting: every unused stack word holds this until the stack grows over it. */
#define STACK_PAINT 0xA5A5A5A5u
#define STACK_PAINT_MARGIN_WORDS 16u

extern void initialise_monitor_handles(void);
extern uint32_t __stack_bottom[], __stack_top[]; /* mps2_an386.ld */
extern char end[];                                /* heap start for newlib's _sbrk */
extern void *sbrk(ptrdiff_t increment);           /* newlib (hidden by -std=c99) */

static volatile uint32_t g_systick_wraps;

void SysTick_Handler(void) { g_systick_wraps++; }

static void paint_stack(void) {
  uint32_t *sp;
  __asm volatile("mov %0, sp" : "=r"(sp));
  for (uint32_t *p = __stack_bottom; p < sp - STACK_PAINT_MARGIN_WORDS; ++p) *p = STACK_PAINT;
}

void hs_platform_init(void) {
  initialise_monitor_handles(); /* semihosting stdin/stdout/stderr for newlib */
  paint_stack();
  hs_uart_init(HS_UART0_BASE, HS_CORE_CLOCK_HZ / HS_SERIAL_BAUD);
  SYST_RVR = SYST_RELOAD_MAX;
  SYST_CVR = 0;
  /* CSR = 7: processor clock, interrupt on wrap (counted above), enabled. */
  SYST_CSR = SYST_CSR_CLKSOURCE_CPU | SYST_CSR_TICKINT | SYST_CSR_ENABLE;
}

int hs_platform_has_ticks(void) { return 1; }

uint64_t hs_platform_ticks(void) {
  uint32_t wraps, count;
  do { /* re-read if SysTick wrapped in between */
    wraps = g_systick_wraps;
    count = SYST_CVR;
  } while (wraps != g_systick_wraps);
  return (uint64_t)wraps * (SYST_RELOAD_MAX + 1u) + (SYST_RELOAD_MAX - count);
}

void hs_serial_write(const uint8_t *data, size_t len) { hs_uart_write(HS_UART0_BASE, data, len); }

int hs_platform_serial_open(void) { return 0; } /* UART0, set up by hs_platform_init */

int hs_serial_read_byte(uint32_t timeout_polls) {
  uint8_t byte;
  for (uint32_t i = 0; timeout_polls == HS_SERIAL_FOREVER || i <= timeout_polls; ++i) {
    if (hs_uart_try_getc(HS_UART0_BASE, &byte)) return byte;
  }
  return -1;
}

size_t hs_platform_stack_used(void) {
  const uint32_t *p = __stack_bottom;
  while (p < __stack_top && *p == STACK_PAINT) ++p;
  return (size_t)((const char *)__stack_top - (const char *)p);
}

size_t hs_platform_heap_used(void) { return (size_t)((char *)sbrk(0) - end); }
