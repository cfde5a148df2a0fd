/* platform.h on a POSIX host: stdout for text, stdin/stdout as the serial channel. */
#include <stdio.h>
#include <unistd.h>

#include "platform.h"

const char hs_platform_name[] = "host";

void hs_platform_init(void) {}

int hs_platform_has_ticks(void) { return 0; }

uint64_t hs_platform_ticks(void) { return 0; }

void hs_serial_write(const uint8_t *data, size_t len) {
  fflush(stdout);  /* keep printf text and serial bytes in order on the same stream */
  while (len > 0) {
    ssize_t n = write(STDOUT_FILENO, data, len);
    if (n <= 0) return;
    data += n;
    len -= (size_t)n;
  }
}

int hs_serial_read_byte(uint32_t timeout_polls) {
  (void)timeout_polls;
  uint8_t byte;
  return read(STDIN_FILENO, &byte, 1) == 1 ? byte : -1;
}

size_t hs_platform_stack_used(void) { return 0; }

size_t hs_platform_heap_used(void) { return 0; }
