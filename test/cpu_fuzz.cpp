// test/cpu_fuzz.cpp — regression tests for the defects the fuzz targets found (fuzz/README.md,
// "Findings"): each replays the reproducer committed in test/fuzz_inputs/ through the reader that
// failed on it. The defects were undefined behaviour that only a sanitizer sees, so these pass in
// the normal build either way; under `make fuzz` the same files also go through the targets
// (build/fuzz/fuzz_<target> test/fuzz_inputs/<file>). Run: make test (./test_cpu -tc='fuzz*').
#include "../hf.h"
#include "test_util.h"

TEST_CASE("fuzz regression: a zero-size F32 safetensors tensor reads as empty (memcpy of 0 bytes from null)") {
    // convert_to_f32 memcpy'd n * 4 bytes even for n = 0, where both vectors' data() are null:
    // undefined behaviour (UBSan: null pointer passed as argument 1 of memcpy)
    SafeTensors st("test/fuzz_inputs/safetensors_empty_f32.safetensors");
    REQUIRE(st.has("empty"));
    CHECK(st.get("empty").shape == std::vector<int64_t>{0, 3});
    CHECK(st.read_f32("empty", {0, 3}).empty());
    CHECK(st.read_f32("empty").empty());
}
