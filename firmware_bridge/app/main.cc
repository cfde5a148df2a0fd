/* heartsound firmware: boot, load the model, run the built-in test inputs, report.
 *
 * Groundwork for the device app: the same main() runs on the host and on the emulated
 * Cortex-M4. Today it runs every window in g_inputs (compiled in by build.py) through the
 * model and prints one line per fact on the console, which the tests parse:
 *   HS_BOOT <target> model=<bytes> arena=<bytes>
 *   HS_ARENA_USED <bytes>
 *   HS_OUT <i> <output bytes as hex>       HS_TICKS <i> <SysTick ticks of the invoke>
 *   HS_OP_TICKS <k> <op name> <ticks>      (operator k of the first window)
 *   HS_STACK_USED <bytes>  HS_HEAP_USED <bytes>  HS_DONE
 * The front end and the serial protocol replace the input loop later; hs_serial_* (see
 * platform.h) is already the channel they will use.
 */
#include <stdio.h>
#include <string.h>

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

}  // namespace

int main(void) {
  hs_platform_init();
  hs_serial_write(reinterpret_cast<const uint8_t *>(kSerialBanner), sizeof(kSerialBanner) - 1);
  printf("HS_BOOT %s model=%u arena=%u\n", hs_platform_name, g_model_len,
         (unsigned)hs_model_arena_size());
  const hs_model_status status = hs_model_init(g_model, g_model_len);
  if (status != HS_MODEL_OK) {
    printf("HS_ERROR model init status %d\n", (int)status);
    return kExitModelInit + (int)status;
  }
  printf("HS_ARENA_USED %u\n", (unsigned)hs_model_arena_used());
  const int rc = RunInputs();
  if (rc != 0) return rc;
  printf("HS_STACK_USED %u\nHS_HEAP_USED %u\nHS_DONE\n", (unsigned)hs_platform_stack_used(),
         (unsigned)hs_platform_heap_used());
  fflush(stdout);
  return 0;
}
