# Toolchain file: bare-metal Cortex-M4F (QEMU mps2-an386, and boards like it).
#
# Hard-float ABI with the single-precision FPU: the startup code enables the FPU (CPACR)
# before any float instruction runs. Newlib comes from the toolchain (libnewlib-arm-none-eabi);
# the app links nano + rdimon (semihosting) itself, so nothing here links a C runtime.
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR cortex-m4)

set(CMAKE_C_COMPILER arm-none-eabi-gcc)
set(CMAKE_CXX_COMPILER arm-none-eabi-g++)
set(CMAKE_ASM_COMPILER arm-none-eabi-gcc)
set(CMAKE_AR arm-none-eabi-ar)
set(CMAKE_RANLIB arm-none-eabi-ranlib)
set(CMAKE_SIZE arm-none-eabi-size)

# Compiler checks link a test program; bare metal has no default startup, so build a
# static library instead.
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)

set(HS_CPU_FLAGS "-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16")
# -Os: flash is the scarce resource; sections per function so --gc-sections drops the
# kernels the op resolver never registers.
set(CMAKE_C_FLAGS_INIT "${HS_CPU_FLAGS} -ffunction-sections -fdata-sections")
set(CMAKE_CXX_FLAGS_INIT "${HS_CPU_FLAGS} -ffunction-sections -fdata-sections")
# Optimise with CMAKE_BUILD_TYPE=MinSizeRel (-Os), the default for this target in
# CMakeLists.txt: CMake appends its own -O3 to any *_RELEASE_INIT set here.

set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
