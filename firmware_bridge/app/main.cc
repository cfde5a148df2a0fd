/* heartsound firmware: boot, load the model, then serve the serial protocol.
 *
 * The same code runs on the host, on the emulated Cortex-M4 (QEMU mps2-an386) and, under
 * the Arduino framework (setup()/loop() below), on a real board. After loading the model:
 *  - an image built with test inputs (g_inputs, compiled in by build.py) runs them through
 *    the model and exits: a self-test of the interpreter alone;
 *  - otherwise the app serves protocol v1 on the serial channel (hs_device.c) forever.
 * One console line per fact (stdout on the host, semihosting on QEMU), for the tests:
 *   HS_BOOT <target> model=<bytes> arena=<bytes>     HS_ARENA_USED <bytes>
 *   self-test: HS_OUT <i> <hex>  HS_TICKS <i> <ticks>  HS_OP_TICKS <k> <op> <ticks>
 *              HS_STACK_USED <bytes>  HS_HEAP_USED <bytes>  HS_DONE
 *   serving:   HS_SERIAL_PORT <path> (host)  HS_READY  HS_WINDOW <i> <Invoke+output ticks>
 *              HS_FRONTEND <frames> <ticks>  HS_INVOKES <n> <ticks>  HS_STACK_USED <bytes>
 */
#include <stdio.h>
#include <string.h>

#include "hs_device.h"
#include "model_runner.h"
#include "platform.h"

extern "C" {
extern const unsigned char g_model[];
extern const unsigned int g_model_len;
extern const int8_t g_inputs[];
extern const unsigned int g_n_inputs;
extern const unsigned int g_input_len;
}

namespace {

// Exit statuses (QEMU passes them on through semihosting): 0 ok, else what failed.
constexpr int kExitModelInit = 10;  // + hs_model_status
constexpr int kExitInputSize = 20;
constexpr int kExitInvoke = 21;
constexpr int kExitSerial = 30;  // the serial port could not be opened

const char kSerialBanner[] = "HS_SERIAL heartsound\r\n";

void PrintHex(const int8_t *data, size_t len) {
  for (size_t i = 0; i < len; ++i) printf("%02x", (unsigned)(uint8_t)data[i]);
}

// Per-operator ticks of one invoke (the same for every window: the kernels do not branch
// on the data).
void PrintOpTicks() {
  for (size_t k = 0; k < hs_model_profile_count(); ++k) {
    uint32_t ticks = 0;
    const char *name = hs_model_profile_op(k, &ticks);
    printf("HS_OP_TICKS %u %s %lu\n", (unsigned)k, name, (unsigned long)ticks);
  }
}

int RunInputs() {
  size_t in_len = 0, out_len = 0;
  int8_t *input = hs_model_input(&in_len);
  if (g_n_inputs > 0 && g_input_len != in_len) {
    printf("HS_ERROR input has %u bytes, model wants %u\n", g_input_len, (unsigned)in_len);
    return kExitInputSize;
  }
  for (unsigned i = 0; i < g_n_inputs; ++i) {
    memcpy(input, g_inputs + (size_t)i * in_len, in_len);
    const uint64_t start = hs_platform_ticks();
    const hs_model_status status = hs_model_invoke();
    const uint64_t ticks = hs_platform_ticks() - start;
    if (status != HS_MODEL_OK) {
      printf("HS_ERROR invoke %u status %d\n", i, (int)status);
      return kExitInvoke;
    }
    const int8_t *output = hs_model_output(&out_len);
    printf("HS_OUT %u ", i);
    PrintHex(output, out_len);
    printf("\n");
    // %lu, not PRIu64: newlib-nano's printf has no 64-bit conversions. 2^32 ticks would be
    // 1.7e11 instructions, far beyond one inference.
    if (hs_platform_has_ticks()) printf("HS_TICKS %u %lu\n", i, (unsigned long)ticks);
    if (i == 0) PrintOpTicks();
  }
  return 0;
}

// Boot and load the model: 0, or the exit status of what failed.
int Boot() {
  hs_platform_init();
  printf("HS_BOOT %s model=%u arena=%u\n", hs_platform_name, g_model_len,
         (unsigned)hs_model_arena_size());
  const hs_model_status status = hs_model_init(g_model, g_model_len);
  if (status != HS_MODEL_OK) {
    printf("HS_ERROR model init status %d\n", (int)status);
    return kExitModelInit + (int)status;
  }
  printf("HS_ARENA_USED %u\n", (unsigned)hs_model_arena_used());
  return 0;
}

int SelfTest() {
  hs_serial_write(reinterpret_cast<const uint8_t *>(kSerialBanner), sizeof(kSerialBanner) - 1);
  const int rc = RunInputs();
  if (rc != 0) return rc;
  printf("HS_STACK_USED %u\nHS_HEAP_USED %u\nHS_DONE\n", (unsigned)hs_platform_stack_used(),
         (unsigned)hs_platform_heap_used());
  fflush(stdout);
  return 0;
}

// Open the serial channel and start the protocol: 0, or the exit status of what failed.
int StartDevice() {
  if (hs_platform_serial_open() != 0) {
    printf("HS_ERROR cannot open the serial port\n");
    return kExitSerial;
  }
  hs_device_init();
  printf("HS_READY\n");
  fflush(stdout);
  return 0;
}

}  // namespace

#ifdef ARDUINO
// Arduino framework: its own main() calls these; a failed boot leaves the board silent
// (the host then reports "no answer").
static bool g_serving = false;

void setup() { g_serving = Boot() == 0 && StartDevice() == 0; }

void loop() {
  if (!g_serving) return;
  const int byte = hs_serial_read_byte(0);
  if (byte >= 0) hs_device_byte((uint8_t)byte);
}
#else
int main(void) {
  int rc = Boot();
  if (rc != 0) return rc;
  if (g_n_inputs > 0) return SelfTest();
  rc = StartDevice();
  if (rc != 0) return rc;
  for (;;) {  // the host build ends when its port fails; a device serves until reset
    const int byte = hs_serial_read_byte(HS_SERIAL_FOREVER);
    if (byte < 0) break;
    hs_device_byte((uint8_t)byte);
  }
  return 0;
}
#endif
