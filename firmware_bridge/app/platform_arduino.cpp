/* platform.h under the Arduino framework (PlatformIO export for real boards): Serial (USB
 * CDC or UART) as the serial channel, printf output unused, no tick counter.
 * Compiled only where ARDUINO is defined; the host and QEMU builds use their own files. */
#ifdef ARDUINO
#include <Arduino.h>

#include "platform.h"

#ifndef HS_SERIAL_BAUD
#define HS_SERIAL_BAUD 115200
#endif

extern "C" {

const char hs_platform_name[] = "arduino";

void hs_platform_init(void) {
  Serial.begin(HS_SERIAL_BAUD);
  while (!Serial) {  // USB CDC: wait until the host opens the port
  }
}

int hs_platform_has_ticks(void) { return 0; }

uint64_t hs_platform_ticks(void) { return 0; }

int hs_platform_serial_open(void) { return 0; }

void hs_serial_write(const uint8_t *data, size_t len) { Serial.write(data, len); }

int hs_serial_read_byte(uint32_t timeout_polls) {
  for (uint32_t i = 0; timeout_polls == HS_SERIAL_FOREVER || i <= timeout_polls; ++i) {
    const int byte = Serial.read();
    if (byte >= 0) return byte;
  }
  return -1;
}

size_t hs_platform_stack_used(void) { return 0; }

size_t hs_platform_heap_used(void) { return 0; }

}  // extern "C"
#endif  // ARDUINO
