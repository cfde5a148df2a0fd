/* No built-in test inputs: the image only boots and loads the model (size builds). */
#include <stdint.h>

extern "C" {
extern const int8_t g_inputs[];
extern const unsigned int g_n_inputs;
extern const unsigned int g_input_len;
const int8_t g_inputs[1] = {0};
const unsigned int g_n_inputs = 0u;
const unsigned int g_input_len = 0u;
}
