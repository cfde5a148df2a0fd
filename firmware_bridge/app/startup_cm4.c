/* C runtime start for a bare-metal Cortex-M4F: vector table, reset handler, fault exit.
 *
 * Linked with -nostartfiles, so this is all that runs before main(): enable the FPU (the
 * image is hard-float and newlib's own code uses float registers), copy .data from flash,
 * zero .bss, run the C++ constructors, call main(), hand its status to exit() (semihosting
 * tells QEMU to stop). Symbols come from mps2_an386.ld.
 */
#include <stdint.h>
#include <stdlib.h>

extern uint32_t __data_load[], __data_start[], __data_end[];
extern uint32_t __bss_start[], __bss_end[];
extern uint32_t __stack_top[];

extern int main(void);
extern void __libc_init_array(void);
void Reset_Handler(void);
void Fault_Handler(void);
void Default_Handler(void);
void SysTick_Handler(void) __attribute__((weak, alias("Default_Handler")));

/* Needed by newlib/libstdc++ when crt0 and crti/crtn are not linked. */
void *__dso_handle = 0;
void _init(void) {}
void _fini(void) {}

#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)
#define CPACR_CP10_CP11_FULL (0xFu << 20) /* full access to the FPU coprocessors */

/* Semihosting (Arm "Angel") calls used when nothing else can be trusted. */
#define SEMIHOST_SYS_WRITE0 0x04u
#define SEMIHOST_SYS_EXIT 0x18u
#define ADP_STOPPED_RUNTIME_ERROR 0x20023u

static void semihost(uint32_t op, const void *arg) {
  register uint32_t r0 __asm("r0") = op;
  register const void *r1 __asm("r1") = arg;
  __asm volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
}

#define CORE_VECTORS 16u
#define EXTERNAL_IRQS 32u /* mps2-an386 interrupt lines; none enabled yet */

__attribute__((section(".isr_vector"), used))
void (*const g_vector_table[CORE_VECTORS + EXTERNAL_IRQS])(void) = {
    (void (*)(void))__stack_top, /* initial SP */
    Reset_Handler,
    Fault_Handler, /* NMI */
    Fault_Handler, /* HardFault */
    Fault_Handler, /* MemManage */
    Fault_Handler, /* BusFault */
    Fault_Handler, /* UsageFault */
    0, 0, 0, 0,
    Default_Handler, /* SVCall */
    Default_Handler, /* DebugMonitor */
    0,
    Default_Handler, /* PendSV */
    SysTick_Handler,
    /* external IRQs: zero-initialised, filled when a driver enables one */
};

void Reset_Handler(void) {
  SCB_CPACR |= CPACR_CP10_CP11_FULL;
  __asm volatile("dsb\n\tisb" ::: "memory");
  for (uint32_t *src = __data_load, *dst = __data_start; dst < __data_end;) *dst++ = *src++;
  for (uint32_t *dst = __bss_start; dst < __bss_end;) *dst++ = 0;
  __libc_init_array();
  exit(main());
}

/* A fault must end the emulator with a failure, not hang a test. */
void Fault_Handler(void) {
  semihost(SEMIHOST_SYS_WRITE0, "HS_FAULT\n");
  semihost(SEMIHOST_SYS_EXIT, (const void *)ADP_STOPPED_RUNTIME_ERROR);
  for (;;) {
  }
}

void Default_Handler(void) { Fault_Handler(); }
