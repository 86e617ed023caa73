#pragma once
#include <cstring>
// Host stand-in for __half (gcc's _Float16: IEEE binary16, round to nearest even).
struct __half { _Float16 v; };
inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline __half __float2half_rn(float f) { return __half{static_cast<_Float16>(f)}; }
