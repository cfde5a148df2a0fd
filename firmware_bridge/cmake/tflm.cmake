# TensorFlow Lite Micro as the static library target `tflm`.
#
# Where the sources come from, first match wins:
#   1. -DTFLM_DIR=<tree>   a tree made by TFLM's create_tflm_tree.py with the CMSIS-NN
#                          kernels (default: <repo>/../shared/third_party/tflite-micro);
#   2. FetchContent of the pinned revision, turned into such a tree with
#      create_tflm_tree.py (needs the network; FETCHCONTENT_SOURCE_DIR_TFLITE_MICRO
#      overrides the download with a local checkout or tree).
# -DTFLM_LIBRARY=<libtflm.a> links a library built earlier from the same tree with the same
# flags (firmware_bridge/build.py caches one per target) instead of compiling ~270 files.
#
# This file is hashed into build.py's cache key: anything that changes the library's bits
# belongs here or in the toolchain file, not in the app's CMakeLists.txt.

set(TFLM_REVISION 90b983c2b3f1480642e040bbd2ddb37b998f3424)
if(NOT DEFINED TFLM_DEFAULT_DIR)  # <repo>/../shared/third_party/tflite-micro
  set(TFLM_DEFAULT_DIR "${CMAKE_CURRENT_LIST_DIR}/../../../shared/third_party/tflite-micro")
endif()

set(TFLM_DIR "" CACHE PATH "TFLite Micro source tree (create_tflm_tree.py output, cmsis_nn)")
set(TFLM_LIBRARY "" CACHE FILEPATH "Prebuilt libtflm.a from the same tree and flags")

function(_tflm_is_tree dir out)
  if(EXISTS "${dir}/tensorflow/lite/micro/micro_interpreter.h"
     AND EXISTS "${dir}/third_party/cmsis_nn/Include/arm_nnfunctions.h")
    set(${out} TRUE PARENT_SCOPE)
  else()
    set(${out} FALSE PARENT_SCOPE)
  endif()
endfunction()

if(NOT TFLM_DIR)
  get_filename_component(_default "${TFLM_DEFAULT_DIR}" ABSOLUTE)
  _tflm_is_tree("${_default}" _ok)
  if(_ok)
    set(TFLM_DIR "${_default}")
  else()
    include(FetchContent)
    FetchContent_Declare(tflite_micro
      GIT_REPOSITORY https://github.com/tensorflow/tflite-micro.git
      GIT_TAG ${TFLM_REVISION})
    # Neither a TFLM checkout nor a generated tree has a top-level CMakeLists.txt, so this
    # only downloads (or takes FETCHCONTENT_SOURCE_DIR_TFLITE_MICRO).
    FetchContent_MakeAvailable(tflite_micro)
    _tflm_is_tree("${tflite_micro_SOURCE_DIR}" _ok)
    if(_ok)
      set(TFLM_DIR "${tflite_micro_SOURCE_DIR}")
    else()
      # A plain checkout: generate the self-contained tree exactly as the offline copy was
      # made (this downloads CMSIS-NN, flatbuffers, ... at TFLM's own pinned versions).
      set(_gen "${tflite_micro_SOURCE_DIR}/tensorflow/lite/micro/tools/project_generation")
      if(NOT EXISTS "${_gen}/create_tflm_tree.py")
        message(FATAL_ERROR "no TFLite Micro sources: ${TFLM_DEFAULT_DIR} is missing and "
                "fetching revision ${TFLM_REVISION} gave none (offline?); pass -DTFLM_DIR=<tree>")
      endif()
      set(TFLM_DIR "${CMAKE_BINARY_DIR}/tflm_tree")
      if(NOT EXISTS "${TFLM_DIR}/tensorflow")
        find_package(Python3 REQUIRED COMPONENTS Interpreter)
        execute_process(
          COMMAND ${Python3_EXECUTABLE}
                  tensorflow/lite/micro/tools/project_generation/create_tflm_tree.py
                  --makefile_options=OPTIMIZED_KERNEL_DIR=cmsis_nn "${TFLM_DIR}"
          WORKING_DIRECTORY "${tflite_micro_SOURCE_DIR}"
          RESULT_VARIABLE _rc)
        if(NOT _rc EQUAL 0)
          message(FATAL_ERROR "create_tflm_tree.py failed (${_rc}): pass -DTFLM_DIR=<tree>")
        endif()
      endif()
    endif()
  endif()
endif()

_tflm_is_tree("${TFLM_DIR}" _ok)
if(NOT _ok)
  message(FATAL_ERROR "TFLM_DIR=${TFLM_DIR} is not a TFLite Micro tree with CMSIS-NN "
                      "(made by create_tflm_tree.py); pass -DTFLM_DIR=<tree>")
endif()

message(STATUS "TFLite Micro sources: ${TFLM_DIR}")

# Flags seen to work with this tree (shared/third_party/README.md). F16/F32 CMSIS-NN paths
# are off: the models are int8 end to end.
set(TFLM_DEFINES TF_LITE_STATIC_MEMORY CMSIS_NN ARM_NN_ENABLE_F16=0 ARM_NN_ENABLE_F32=0)
set(TFLM_CXX_OPTIONS -fno-exceptions -fno-rtti -fno-threadsafe-statics)
set(TFLM_INCLUDES
  "${TFLM_DIR}"
  "${TFLM_DIR}/third_party/flatbuffers/include"
  "${TFLM_DIR}/third_party/gemmlowp"
  "${TFLM_DIR}/third_party/ruy"
  "${TFLM_DIR}/third_party/kissfft"
  "${TFLM_DIR}/third_party/cmsis"
  "${TFLM_DIR}/third_party/cmsis_nn"
  "${TFLM_DIR}/third_party/cmsis_nn/Include"
  "${TFLM_DIR}/third_party/cmsis/CMSIS/Core/Include")

# Kernels: only those of the ops in app/model_ops.h (third column of each X(...) entry),
# plus the helpers every kernel uses. The framework (interpreter, allocator, planner,
# schema) and all of CMSIS-NN's C sources are always compiled.
option(TFLM_ALL_KERNELS "Compile every kernel in the tree, not only app/model_ops.h's" OFF)
set(TFLM_OPS_HEADER "${CMAKE_CURRENT_LIST_DIR}/../app/model_ops.h")
set(TFLM_KERNEL_SUPPORT kernel_util micro_tensor_utils)

function(_tflm_kernel_stems out)
  file(READ "${TFLM_OPS_HEADER}" _text)
  string(REGEX MATCHALL "X\\(Add[A-Za-z0-9]+,[ \t\r\n\\]*[A-Z0-9_]+,[ \t\r\n\\]*\"[a-z0-9_|]+\""
         _entries "${_text}")
  set(_stems ${TFLM_KERNEL_SUPPORT})
  foreach(_entry ${_entries})
    string(REGEX REPLACE ".*\"([a-z0-9_|]+)\"$" "\\1" _files "${_entry}")
    string(REPLACE "|" ";" _files "${_files}")
    list(APPEND _stems ${_files})
  endforeach()
  list(REMOVE_DUPLICATES _stems)
  set(${out} ${_stems} PARENT_SCOPE)
endfunction()

function(_tflm_sources out)
  set(_kernels "${TFLM_DIR}/tensorflow/lite/micro/kernels")
  file(GLOB_RECURSE _all CONFIGURE_DEPENDS "${TFLM_DIR}/tensorflow/*.cc")
  if(TFLM_ALL_KERNELS)
    set(${out} ${_all} PARENT_SCOPE)
    return()
  endif()
  list(FILTER _all EXCLUDE REGEX "^${_kernels}/")
  _tflm_kernel_stems(_stems)
  foreach(_stem ${_stems})
    foreach(_file "${_kernels}/${_stem}.cc" "${_kernels}/${_stem}_common.cc"
                  "${_kernels}/cmsis_nn/${_stem}.cc")
      if(EXISTS "${_file}")
        list(APPEND _all "${_file}")
      endif()
    endforeach()
  endforeach()
  set(${out} ${_all} PARENT_SCOPE)
endfunction()

if(TFLM_LIBRARY)
  add_library(tflm STATIC IMPORTED GLOBAL)
  set_target_properties(tflm PROPERTIES IMPORTED_LOCATION "${TFLM_LIBRARY}")
  set(_scope INTERFACE)
else()
  _tflm_sources(TFLM_CC_SOURCES)
  file(GLOB_RECURSE TFLM_C_SOURCES CONFIGURE_DEPENDS "${TFLM_DIR}/third_party/cmsis_nn/*.c")
  add_library(tflm STATIC ${TFLM_CC_SOURCES} ${TFLM_C_SOURCES})
  target_compile_options(tflm PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:${TFLM_CXX_OPTIONS}> -w)
  set_target_properties(tflm PROPERTIES C_STANDARD 99 C_EXTENSIONS ON
                                        CXX_STANDARD 17 CXX_EXTENSIONS ON)
  set(_scope PUBLIC)
endif()
# SYSTEM: the app is built with warnings on; TFLM's headers are not ours to fix.
target_include_directories(tflm SYSTEM ${_scope} ${TFLM_INCLUDES})
target_compile_definitions(tflm ${_scope} ${TFLM_DEFINES})
target_compile_features(tflm ${_scope} cxx_std_17)
