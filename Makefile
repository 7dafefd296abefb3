# Makefile — builds every binary at the repo root.
#   make               all binaries (CUDA sources compile with nvcc even where there is no GPU)
#   make test          build and run the CPU test suite (./test_cpu), as CI does
#   make test-gpu      build and run the GPU test suite (./test_gpu; needs an NVIDIA GPU)
#   make NO_CUDA=1     CPU-only binaries, for machines without the CUDA toolkit
#   make ARCH=sm_80    another GPU architecture (default sm_90, H100/H200); ARCH=compute_80 builds
#                      PTX only, which the driver compiles at load: the sm_80 code run on a Hopper
#   make fuzz          the libFuzzer targets (clang, ASan + UBSan) in build/fuzz/; fuzz/README.md
#   make fuzz-smoke    every fuzz target for a few seconds on its seeds, as CI does
#   make fuzz-corpus   regenerate the seed corpus fuzz/corpus/ with the project's writers
#
# One mechanism makes the CUDA build optional: GPU_OBJS (the CUDA model, its kernels and the GPU
# half of ./train) is linked into train and sample when CUDA is built, and is empty
# with NO_CUDA=1. The programs find out at run time which halves they have (weak symbols).

CXX      ?= g++
CXXFLAGS ?= -O2 -g -std=c++17 -Wall -Wextra -Wno-unused-parameter -fopenmp
ARCH     ?= sm_90
CUDA_HOME ?= /usr/local/cuda
LDLIBS_CPU = -lcrypto -fopenmp

BUILD := build
# the library every binary links: formats, the CPU reference, NF4's CPU twin, sampling, training logic
LIB_SRCS := common.cpp model.cpp hf.cpp chat.cpp llama2_cpu.cpp quant_cpu.cpp sampling.cpp \
            train_config.cpp schedule.cpp checkpoint.cpp plot.cpp
LIB_OBJS := $(LIB_SRCS:%.cpp=$(BUILD)/%.o)
# GGUF (its vocabulary comes from sentencepiece) and the data formats (with the bounded tokenizer),
# for the tools that need them
GGUF_OBJS := $(BUILD)/gguf.o
FORMATS_OBJS := $(BUILD)/data/formats.o $(BUILD)/data/prefix_encode.o
TRAIN_OBJS := $(BUILD)/train.o $(BUILD)/train_backend.o $(BUILD)/train_demo.o
TEST_CPU_SRCS := $(wildcard test/cpu_*.cpp) test/test_cpu.cpp
TEST_CPU_OBJS := $(TEST_CPU_SRCS:%.cpp=$(BUILD)/%.o)
HEADERS := $(wildcard *.h data/*.h kernels/*.h kernels/*.cuh)

CPU_BINS := export_hf prepare_lima convert_adapter merge_adapter dump_logits plot_loss train sample test_cpu
GPU_BINS :=
GPU_OBJS :=
TRAIN_GPU_OBJS :=
LINK := $(CXX) $(CXXFLAGS)
LINK_LIBS := $(LDLIBS_CPU)

# The fuzz goals (below) never need CUDA: given alone they build as with NO_CUDA=1.
ifneq ($(MAKECMDGOALS),)
  ifeq ($(filter-out fuzz fuzz-smoke fuzz-corpus,$(MAKECMDGOALS)),)
    NO_CUDA := 1
  endif
endif

# nvcc: on PATH or in $(CUDA_HOME). Missing nvcc is an error, never a silent CPU-only build.
ifneq ($(NO_CUDA),1)
  NVCC ?= $(shell command -v nvcc 2>/dev/null || (test -x $(CUDA_HOME)/bin/nvcc && echo $(CUDA_HOME)/bin/nvcc))
  ifeq ($(NVCC),)
    $(error nvcc not found (looked on PATH and in $(CUDA_HOME)/bin): install the CUDA toolkit, set CUDA_HOME, or build the CPU-only binaries with 'make NO_CUDA=1')
  endif
  NVCCFLAGS ?= -O3 -std=c++17 -arch=$(ARCH) -lineinfo -Xcompiler -fopenmp -Xcompiler -Wall
  # the CUDA model (llama2.cu + its buffers), the ops (kernels/), LoRA, AdamW, NF4, the decoder
  CUDA_SRCS := llama2.cu gpu_base.cu gpu_buffers.cu lora.cu adamw.cu quant.cu decode.cu $(wildcard kernels/*.cu)
  CUDA_OBJS := $(CUDA_SRCS:%.cu=$(BUILD)/%.o)
  GPU_OBJS := $(CUDA_OBJS)
  TRAIN_GPU_OBJS := $(BUILD)/train_backend_gpu.o
  GPU_BINS := test_gpu bench_quant bench_step bench_decode rcp_probe
  LINK := $(NVCC) $(NVCCFLAGS)
  LINK_LIBS := -lcublasLt -lcrypto -lgomp
endif

.PHONY: all test test-gpu clean fuzz fuzz-smoke fuzz-corpus
all: $(CPU_BINS) $(GPU_BINS)

$(BUILD)/%.o: %.cpp $(HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -I. -c $< -o $@

# the CPU test objects also include test/*.h (test_util.h, nf4_fixtures.h)
$(TEST_CPU_OBJS): $(wildcard test/*.h)

# quant_cpu.cpp reproduces GPU float results bit for bit: g++ must never fuse a * b + c into an fma
# (it would with -march=native and the default -ffp-contract=fast), so the flag is pinned here.
$(BUILD)/quant_cpu.o: quant_cpu.cpp $(HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -ffp-contract=off -I. -c $< -o $@

ifneq ($(NO_CUDA),1)
# The nvcc command line is kept in a file rewritten only when it changes, and every CUDA object
# depends on it: `make ARCH=sm_80` after a Hopper build recompiles them (make alone would see
# up-to-date objects and link sm_90 code into binaries meant for an A100).
NVCC_STAMP := $(BUILD)/nvcc-command.txt
NVCC_CMD := $(NVCC) $(NVCCFLAGS)
$(shell mkdir -p $(BUILD) && (echo '$(NVCC_CMD)' | cmp -s - $(NVCC_STAMP) || echo '$(NVCC_CMD)' > $(NVCC_STAMP)))
$(BUILD)/%.o: %.cu $(HEADERS) $(wildcard test/*.h bench/*.h) $(NVCC_STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -I. -c $< -o $@

# host C++ that calls the CUDA model: g++ with the CUDA headers
$(BUILD)/train_backend_gpu.o: train_backend_gpu.cpp $(HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -I$(CUDA_HOME)/include -I. -c $< -o $@

TEST_GPU_OBJS := $(patsubst %.cu,$(BUILD)/%.o,test/test_gpu.cu $(wildcard test/gpu_*.cu))
test_gpu: $(TEST_GPU_OBJS) $(CUDA_OBJS) $(LIB_OBJS)
	$(LINK) $^ -o $@ $(LINK_LIBS) -lsentencepiece
bench_quant: $(BUILD)/bench/bench_quant.o $(CUDA_OBJS) $(LIB_OBJS)
	$(LINK) $^ -o $@ $(LINK_LIBS) -lsentencepiece
bench_step: $(BUILD)/bench/bench_step.o $(CUDA_OBJS) $(LIB_OBJS)
	$(LINK) $^ -o $@ $(LINK_LIBS) -lsentencepiece
bench_decode: $(BUILD)/bench/bench_decode.o $(CUDA_OBJS) $(LIB_OBJS)
	$(LINK) $^ -o $@ $(LINK_LIBS) -lsentencepiece
# measures the GPU's approximate reciprocal and prints quant_cpu.cpp's emulation tables
rcp_probe: $(BUILD)/tools/rcp_probe.o $(CUDA_OBJS) $(LIB_OBJS)
	$(LINK) $^ -o $@ $(LINK_LIBS) -lsentencepiece
endif

export_hf: $(BUILD)/tools/export_hf.o $(LIB_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS_CPU) -lsentencepiece

convert_adapter: $(BUILD)/tools/convert_adapter.o $(LIB_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS_CPU)

plot_loss: $(BUILD)/tools/plot_loss.o $(LIB_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS_CPU)

# the demo's conversations are assembled into ./train (.incbin): rebuild when they change
$(BUILD)/train_demo.o: data/demo.jsonl

merge_adapter: $(BUILD)/tools/merge_adapter.o $(GGUF_OBJS) $(LIB_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS_CPU) -lsentencepiece

dump_logits: $(BUILD)/tools/dump_logits.o $(LIB_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS_CPU) -lsentencepiece

prepare_lima: $(BUILD)/data/prepare_lima.o $(FORMATS_OBJS) $(LIB_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS_CPU) -lsentencepiece

# ./train and ./sample: the CPU reference always, the GPU halves (GPU_OBJS) when CUDA is built
train: $(TRAIN_OBJS) $(TRAIN_GPU_OBJS) $(GPU_OBJS) $(LIB_OBJS)
	$(LINK) $^ -o $@ $(LINK_LIBS) -lsentencepiece

sample: $(BUILD)/sample.o $(GPU_OBJS) $(LIB_OBJS)
	$(LINK) $^ -o $@ $(LINK_LIBS) -lsentencepiece

test_cpu: $(TEST_CPU_OBJS) $(GGUF_OBJS) $(FORMATS_OBJS) $(LIB_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS_CPU) -lsentencepiece -lsentencepiece_train

# the CPU tests run the tools as subprocesses too, so they are built first
test: $(CPU_BINS)
	./test_cpu

test-gpu: $(GPU_BINS)
	./test_gpu

# ----------------------------------------------------------------------------------------------
# fuzzing (fuzz/README.md): one libFuzzer target per file reader, built with clang and ASan + UBSan
# into build/fuzz/. The library (LIB_SRCS) is compiled again there with the same flags, so no
# object mixes with the normal build; the binaries at the repo root are untouched.
FUZZ_CXX ?= $(shell command -v clang++-14 2>/dev/null || command -v clang++ 2>/dev/null || echo clang++-14)
FUZZ_SAN := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
# (-ffp-contract=off as for quant_cpu.o above; the OpenMP pragmas of the CPU reference stay serial)
FUZZ_CXXFLAGS := -g -O1 -std=c++17 -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas \
                 -Wno-source-uses-openmp -ffp-contract=off
FUZZ_BUILD := $(BUILD)/fuzz
FUZZ_LIB_OBJS := $(LIB_SRCS:%.cpp=$(FUZZ_BUILD)/%.o)
FUZZ_TARGETS := model data adapter state safetensors config peft
FUZZ_BINS := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)

fuzz: $(FUZZ_BINS) $(FUZZ_BUILD)/make_corpus
# (the targets' objects are kept: make would delete them as intermediates of a chain of patterns)
.SECONDARY: $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz/fuzz_%.o)

$(FUZZ_BUILD)/%.o: %.cpp $(HEADERS) $(wildcard fuzz/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CXX) $(FUZZ_SAN) $(FUZZ_CXXFLAGS) -I. -c $< -o $@

$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/fuzz/fuzz_%.o $(FUZZ_LIB_OBJS)
	$(FUZZ_CXX) $(FUZZ_SAN) $(FUZZ_CXXFLAGS) $^ -o $@ -lcrypto

# the seed generator has its own main(): sanitized and instrumented, without libFuzzer's main
$(FUZZ_BUILD)/make_corpus: $(FUZZ_BUILD)/fuzz/make_corpus.o $(FUZZ_LIB_OBJS)
	$(FUZZ_CXX) -fsanitize=fuzzer-no-link,address,undefined $(FUZZ_CXXFLAGS) $^ -o $@ -lcrypto

fuzz-smoke: fuzz
	fuzz/run.sh smoke

# the model seeds come from ./export_hf, so the corpus follows the model format
fuzz-corpus: $(FUZZ_BUILD)/make_corpus export_hf
	rm -rf fuzz/corpus
	$(FUZZ_BUILD)/make_corpus fuzz/corpus ./export_hf

clean:
	rm -rf $(BUILD) $(CPU_BINS) $(GPU_BINS)
