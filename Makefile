# Makefile — builds every binary at the repo root.
#   make               all binaries (CUDA sources compile with nvcc even where there is no GPU)
#   make test          build and run the CPU test suite (./test_cpu), as CI does
#   make test-gpu      build and run the GPU test suite (./test_gpu; needs an NVIDIA GPU)
#   make NO_CUDA=1     CPU-only binaries, for machines without the CUDA toolkit
#   make ARCH=sm_80    another GPU architecture (default sm_90, H100/H200)
#   make NO_NCCL=1     build without NCCL (single GPU); also chosen, with a warning, when nccl.h is absent

CXX      ?= g++
CXXFLAGS ?= -O2 -g -std=c++17 -Wall -Wextra -Wno-unused-parameter -fopenmp
ARCH     ?= sm_90
CUDA_HOME ?= /usr/local/cuda
LDLIBS_CPU = -lcrypto -fopenmp

BUILD := build
LIB_SRCS := model.cpp hf.cpp llama2_cpu.cpp quant_cpu.cpp train_util.cpp sampling.cpp
LIB_OBJS := $(LIB_SRCS:%.cpp=$(BUILD)/%.o)
TEST_CPU_SRCS := $(wildcard test/cpu_*.cpp) test/test_cpu.cpp
TEST_CPU_OBJS := $(TEST_CPU_SRCS:%.cpp=$(BUILD)/%.o)

CPU_BINS := export_hf prepare_lima convert_adapter train sample test_cpu
GPU_BINS :=

# nvcc: on PATH or in $(CUDA_HOME). Missing nvcc is an error, never a silent CPU-only build.
ifneq ($(NO_CUDA),1)
  NVCC ?= $(shell command -v nvcc 2>/dev/null || (test -x $(CUDA_HOME)/bin/nvcc && echo $(CUDA_HOME)/bin/nvcc))
  ifeq ($(NVCC),)
    $(error nvcc not found (looked on PATH and in $(CUDA_HOME)/bin): install the CUDA toolkit, set CUDA_HOME, or build the CPU-only binaries with 'make NO_CUDA=1')
  endif
  NVCCFLAGS ?= -O3 -std=c++17 -arch=$(ARCH) -lineinfo -Xcompiler -fopenmp -Xcompiler -Wall
  GPU_LDLIBS = -lcublasLt -lcrypto -lgomp -lsentencepiece
  GPU_BINS := test_gpu bench_quant bench_step bench_decode rcp_probe
  NCCL_FLAGS :=
  NCCL_LIBS :=
  ifneq ($(NO_NCCL),1)
    ifneq ($(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h),)
      NCCL_FLAGS := -DUSE_NCCL
      NCCL_LIBS := -lnccl
    else
      $(warning nccl.h not found in $(CUDA_HOME)/include or /usr/include: building without multi-GPU support (NO_NCCL=1 silences this))
    endif
  endif
endif

.PHONY: all test test-gpu clean
all: $(CPU_BINS) $(GPU_BINS)

$(BUILD)/%.o: %.cpp $(wildcard *.h) | $(BUILD)/test $(BUILD)/tools $(BUILD)/data
	$(CXX) $(CXXFLAGS) -I. -c $< -o $@

$(BUILD)/test $(BUILD)/tools $(BUILD)/data:
	mkdir -p $@

# the CPU test objects also include test/*.h (test_util.h, nf4_fixtures.h)
$(TEST_CPU_OBJS): $(wildcard test/*.h)

# quant_cpu.cpp reproduces GPU float results bit for bit: g++ must never fuse a * b + c into an fma
# (it would with -march=native and the default -ffp-contract=fast), so the flag is pinned here.
$(BUILD)/quant_cpu.o: quant_cpu.cpp $(wildcard *.h) | $(BUILD)/test
	$(CXX) $(CXXFLAGS) -ffp-contract=off -I. -c $< -o $@

# ---- CUDA: kernels (*.cu at the root), the GPU test suite (test/test_gpu.cu + test/gpu_*.cu), benchmarks
ifneq ($(NO_CUDA),1)
TEST_GPU_OBJS := $(patsubst %.cu,$(BUILD)/%.o,test/test_gpu.cu $(wildcard test/gpu_*.cu))
GPU_KERNEL_OBJS := $(patsubst %.cu,$(BUILD)/%.o,$(wildcard *.cu))

$(BUILD)/%.o: %.cu $(wildcard *.h test/*.h bench/*.h) | $(BUILD)/test $(BUILD)/bench $(BUILD)/tools
	$(NVCC) $(NVCCFLAGS) $(NCCL_FLAGS) -I. -c $< -o $@

$(BUILD)/bench:
	mkdir -p $@

test_gpu: $(TEST_GPU_OBJS) $(GPU_KERNEL_OBJS) $(LIB_OBJS)
	$(NVCC) $(NVCCFLAGS) $^ -o $@ $(GPU_LDLIBS)

bench_quant: $(BUILD)/bench/bench_quant.o $(GPU_KERNEL_OBJS) $(LIB_OBJS)
	$(NVCC) $(NVCCFLAGS) $^ -o $@ $(GPU_LDLIBS)

# measures the GPU's approximate reciprocal and prints quant_cpu.cpp's emulation tables
bench_step: $(BUILD)/bench/bench_step.o $(GPU_KERNEL_OBJS) $(LIB_OBJS)
	$(NVCC) $(NVCCFLAGS) $^ -o $@ $(GPU_LDLIBS)

bench_decode: $(BUILD)/bench/bench_decode.o $(GPU_KERNEL_OBJS) $(LIB_OBJS)
	$(NVCC) $(NVCCFLAGS) $^ -o $@ $(GPU_LDLIBS) -lsentencepiece

rcp_probe: $(BUILD)/tools/rcp_probe.o $(GPU_KERNEL_OBJS) $(LIB_OBJS)
	$(NVCC) $(NVCCFLAGS) $^ -o $@ $(GPU_LDLIBS)
endif

export_hf: $(BUILD)/tools/export_hf.o $(LIB_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS_CPU) -lsentencepiece

convert_adapter: $(BUILD)/tools/convert_adapter.o $(LIB_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS_CPU)

prepare_lima: $(BUILD)/data/prepare_lima.o $(LIB_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS_CPU) -lsentencepiece

# ./train: the CUDA backend when CUDA is built (USE_CUDA), the CPU reference always (--device cpu)
# (the CUDA variant's object has its own name, so a later NO_CUDA=1 build never links it)
ifneq ($(NO_CUDA),1)
$(BUILD)/train_cuda.o: train.cpp $(wildcard *.h) | $(BUILD)/test
	$(CXX) $(CXXFLAGS) -DUSE_CUDA -I$(CUDA_HOME)/include -I. -c $< -o $@
train: $(BUILD)/train_cuda.o $(GPU_KERNEL_OBJS) $(LIB_OBJS)
	$(NVCC) $(NVCCFLAGS) $^ -o $@ $(GPU_LDLIBS) -lsentencepiece
else
train: $(BUILD)/train.o $(LIB_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS_CPU) -lsentencepiece
endif

# chat / generation: the CPU decoder always, the GPU one (decode.cu, make_gpu_decoder in sampling.h)
# linked in when CUDA is built
ifneq ($(NO_CUDA),1)
sample: $(BUILD)/sample.o $(GPU_KERNEL_OBJS) $(LIB_OBJS)
	$(NVCC) $(NVCCFLAGS) $^ -o $@ $(GPU_LDLIBS) -lsentencepiece
else
sample: $(BUILD)/sample.o $(LIB_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS_CPU) -lsentencepiece
endif

test_cpu: $(TEST_CPU_OBJS) $(LIB_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS_CPU) -lsentencepiece -lsentencepiece_train

# the CPU tests run the tools as subprocesses too, so they are built first
test: $(CPU_BINS)
	./test_cpu

test-gpu: $(GPU_BINS)
	./test_gpu

clean:
	rm -rf $(BUILD) $(CPU_BINS) $(GPU_BINS)
