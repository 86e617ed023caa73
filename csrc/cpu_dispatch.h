// _C's side of the CPU variants (cpu_dispatch.cpp): which capabilities this CPU runs, and the variant
// the registered CPU ops call.
#pragma once

#include <string>
#include <vector>

#include "cpu/variant.h"

namespace infovae {
namespace cpu {

// "baseline", then "avx2" (x86-64-v3: AVX2, FMA, BMI1/2 ...) and "avx512" (x86-64-v4: AVX-512 F, BW, CD,
// DQ, VL) when the CPU and the OS support them; {"baseline"} on other architectures.
std::vector<std::string> supported_capabilities();

// The variant the CPU ops call from now on (checked for the table layout).
void install(const Variant* variant);

// nullptr before the first install.
const Variant* installed_variant();

}  // namespace cpu
}  // namespace infovae
