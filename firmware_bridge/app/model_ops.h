/* The TFLite operators the firmware can run: the one list of them.
 *
 * Each entry is X(resolver method, schema BuiltinOperator name, kernel files, registration):
 *  - model_runner.cc registers exactly these ops, each with the registration in the last
 *    column: the int8-only variant where CMSIS-NN has one (the models are full int8), which
 *    keeps the int4/int16/float paths out of flash;
 *  - cmake/tflm.cmake compiles only the kernel sources named in the third column (file
 *    stems under tensorflow/lite/micro/kernels/ and its cmsis_nn/, "_common" added
 *    automatically; several stems separated by '|'), so the library takes a fraction of
 *    the full tree's build time (-DTFLM_ALL_KERNELS=ON compiles every kernel);
 *  - firmware_bridge/build.py refuses, before building, a model that needs an op missing
 *    here, and hashes this file into its library cache key.
 * Add a line when a model needs a new op; a missing kernel stem shows up as an undefined
 * Register_<OP> at link time.
 */
#ifndef HS_MODEL_OPS_H_
#define HS_MODEL_OPS_H_

#define HS_MODEL_OPS(X)                                                                   \
  X(AddConv2D, CONV_2D, "conv", Register_CONV_2D_INT8())                                  \
  X(AddDepthwiseConv2D, DEPTHWISE_CONV_2D, "depthwise_conv",                              \
    Register_DEPTHWISE_CONV_2D_INT8())                                                    \
  X(AddMaxPool2D, MAX_POOL_2D, "pooling", Register_MAX_POOL_2D_INT8())                    \
  X(AddAveragePool2D, AVERAGE_POOL_2D, "pooling", Register_AVERAGE_POOL_2D_INT8())        \
  X(AddMean, MEAN, "reduce", Register_MEAN())                                             \
  X(AddFullyConnected, FULLY_CONNECTED, "fully_connected",                                \
    Register_FULLY_CONNECTED_INT8())                                                      \
  X(AddSoftmax, SOFTMAX, "softmax", Register_SOFTMAX_INT8())                              \
  X(AddLogistic, LOGISTIC, "logistic", Register_LOGISTIC())                               \
  X(AddReshape, RESHAPE, "reshape", Register_RESHAPE())                                   \
  X(AddStridedSlice, STRIDED_SLICE, "strided_slice", Register_STRIDED_SLICE())            \
  X(AddUnidirectionalSequenceLSTM, UNIDIRECTIONAL_SEQUENCE_LSTM,                          \
    "unidirectional_sequence_lstm|lstm_eval", Register_UNIDIRECTIONAL_SEQUENCE_LSTM_INT8()) \
  X(AddQuantize, QUANTIZE, "quantize", Register_QUANTIZE())                               \
  X(AddDequantize, DEQUANTIZE, "dequantize", Register_DEQUANTIZE())                       \
  X(AddAdd, ADD, "add", Register_ADD_INT8())                                              \
  X(AddMul, MUL, "mul", Register_MUL_INT8())                                              \
  X(AddSub, SUB, "sub", Register_SUB())

#endif  /* HS_MODEL_OPS_H_ */
