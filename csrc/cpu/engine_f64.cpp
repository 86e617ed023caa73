#include "engine_impl.h"
INFOVAE_INSTANTIATE_ENGINE(double)
