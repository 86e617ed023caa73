#include "engine_impl.h"
INFOVAE_INSTANTIATE_ENGINE_EXT(double)
