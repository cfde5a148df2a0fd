/* One int8 TFLite model run by TFLite Micro from a static arena (C API).
 *
 * Contract: the model flatbuffer is read in place and must outlive the runner (it is the
 * flash array from model_array.py). All tensors live in one static arena of HS_ARENA_SIZE
 * bytes owned by model_runner.cc: no heap. Input and output pointers point into that arena
 * and stay valid until the next hs_model_init(). Not reentrant: one model per image.
 */
#ifndef HS_MODEL_RUNNER_H_
#define HS_MODEL_RUNNER_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  HS_MODEL_OK = 0,
  HS_MODEL_BAD_SCHEMA = 1,   /* flatbuffer schema version is not TFLite Micro's */
  HS_MODEL_BAD_OPS = 2,      /* an operator is not in model_ops.h */
  HS_MODEL_NO_ARENA = 3,     /* AllocateTensors failed: HS_ARENA_SIZE too small */
  HS_MODEL_NOT_INT8 = 4,     /* input or output tensor is not int8 */
  HS_MODEL_INVOKE_FAILED = 5,
  HS_MODEL_NOT_READY = 6     /* hs_model_init() has not succeeded */
} hs_model_status;

/* Parse the model, register the ops and plan the arena. */
hs_model_status hs_model_init(const unsigned char *model, unsigned int model_len);

/* The int8 input tensor (write the quantised features here) and its length in bytes. */
int8_t *hs_model_input(size_t *len);

/* The int8 output tensor after hs_model_invoke(), and its length in bytes. */
const int8_t *hs_model_output(size_t *len);

hs_model_status hs_model_invoke(void);

/* Reset the model's variable tensors (recurrent state): every window starts afresh, as
 * the Python side does before each window. */
hs_model_status hs_model_reset(void);

/* Arena bytes the planner actually used: the figure to size HS_ARENA_SIZE with. */
size_t hs_model_arena_used(void);

/* Bytes of the static arena (HS_ARENA_SIZE). */
size_t hs_model_arena_size(void);

/* Operators timed during the last hs_model_invoke(), in execution order: 0 where the
 * platform has no tick counter (hs_platform_has_ticks() == 0). */
size_t hs_model_profile_count(void);

/* Name of timed operator i and, in *ticks, its platform ticks (see platform.h). */
const char *hs_model_profile_op(size_t i, uint32_t *ticks);

#ifdef __cplusplus
}
#endif

#endif  /* HS_MODEL_RUNNER_H_ */
