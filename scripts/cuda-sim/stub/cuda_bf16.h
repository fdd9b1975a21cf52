// host-simulation stub: both 16-bit types live in cuda_fp16.h
#pragma once
#include "cuda_fp16.h"
